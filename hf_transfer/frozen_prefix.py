"""Frozen-prefix caching: compute what a frozen bottom of the network outputs for a row once, then train the top.

With ``freeze_backbone: true`` (a linear probe) or ``trainable_layers: N`` the embeddings and the bottom encoder
layers never change, so they compute the same hidden states for a row in every epoch. :class:`FrozenPrefixCache`
computes them once (in inference mode, without gradients, batched by length) and feeds them to the trainable top:

* it is a forward pre-hook on the transformers model: the batch (``input_ids``, ``attention_mask``,
  ``token_type_ids``) reaches the model as usual, and the hook swaps the token ids for the cached hidden states
  (``inputs_embeds``), looked up by each row's tokens. The model's own ``forward`` then runs with the frozen modules
  passing their input through, so the attention mask, the trainable layers, the pooler and the head (its dropout
  included) run exactly as transformers wrote them, and the hooks that read the head's input (``FeatureTap``, for
  DANN, MMD, CORAL ...) fire as before;
* a row that is not cached yet (a new evaluation set) is computed when first met, so every batch is right;
* the model object, its parameter names and its state dict stay those of the ordinary model: checkpoints are
  ordinary checkpoints (resume recomputes the cache), and once detached the model exports as it always does.

Two cuts: at encoder layer ``k`` (``trainable_layers``: the hidden states that enter layer ``k``, per row and per
real token, padded per batch with zeros, which the attention mask hides), and, for a linear probe of a model that
classifies its first token (BERT-like), the backbone's first-token state and pooled output only (two vectors a row).

The frozen part runs in inference mode in the cache: its dropout is off. Training without the cache runs the frozen
layers' dropout (the Trainer puts the whole model in training mode); with ``hidden_dropout_prob`` 0 both are the same.

The cache lives in memory, or, past half the free memory, in one float32 file on disk (:class:`DiskStore`).
:func:`setup` decides ``cache_frozen`` for a run: where the cache cannot hold it says why (:func:`refusal`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .backbones import FIRST_TOKEN, _unwrap, backbone_prefix, classified_token, encoder_layers
from .errors import RecipeError, UserError

logger = logging.getLogger(__name__)

CACHE_FROZEN_CHOICES = ("auto", "true", "false")
#: Methods that run the network on inputs other than the batch's rows (masked copies, a reference model), so a cache
#: of the batch rows' hidden states would not serve them.
FULL_FORWARD_METHODS = {
    "mlm": "mlm adds masked copies of each batch's rows, new inputs every step",
    "lwf": "lwf runs a frozen copy of the whole model on every batch",
}
#: Model inputs the token-id lookup understands; a batch with any other model input is not one the cache serves.
KEY_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Folder for a cache kept on disk (default: the system's temporary folder).
DISK_ENV = "HF_TRANSFER_FROZEN_CACHE_DIR"


def normalise_setting(value: Any) -> str:
    """``cache_frozen`` as one of ``auto``, ``true``, ``false`` (YAML booleans accepted)."""
    text = str(value).strip().lower()
    text = {"yes": "true", "on": "true", "1": "true", "no": "false", "off": "false", "0": "false"}.get(text, text)
    if text not in CACHE_FROZEN_CHOICES:
        raise RecipeError(f"cache_frozen: expected auto, true or false, got {value!r}")
    return text


def _passthrough_embeddings(*args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    if inputs_embeds is None:
        raise RuntimeError("frozen-prefix cache: the embeddings were skipped but no cached hidden states came")
    return inputs_embeds


def _passthrough_layer(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


class DiskStore:
    """Row key -> ``(tokens, width)`` hidden states in one float32 file on disk (a NumPy memory map), for caches larger
    than the memory can hold: rows are written one after another as the cache fills and read back as slices (the
    operating system keeps the hot part in its page cache). Rows beyond the size given at creation stay in memory.
    The file lives in a temporary folder removed by :meth:`close` (or when the store is garbage-collected)."""

    def __init__(self, *, tokens: int, width: int, folder: str | None = None):
        import tempfile

        import numpy as np

        self._folder = tempfile.TemporaryDirectory(prefix="hf_transfer_frozen_", dir=folder)
        path = os.path.join(self._folder.name, "hidden_states.npy")
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(max(tokens, 1), width))
        self.index: dict[bytes, tuple[int, int]] = {}
        self.overflow: dict[bytes, torch.Tensor] = {}
        self.used = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self.index or key in self.overflow

    def __len__(self) -> int:
        return len(self.index) + len(self.overflow)

    def __setitem__(self, key: bytes, value: torch.Tensor) -> None:
        n = value.shape[0]
        if self.used + n > self.array.shape[0]:
            self.overflow[key] = value
            return
        self.array[self.used:self.used + n] = value.float().numpy()
        self.index[key] = (self.used, n)
        self.used += n

    def __getitem__(self, key: bytes) -> torch.Tensor:
        if key in self.overflow:
            return self.overflow[key]
        start, n = self.index[key]
        return torch.from_numpy(self.array[start:start + n].copy())

    def nbytes(self) -> int:
        return self.used * self.array.shape[1] * 4 + sum(v.numel() * v.element_size() for v in self.overflow.values())

    def close(self) -> None:
        self.array = None
        self._folder.cleanup()


class FrozenPrefixCache:
    """Per-row outputs of a model's frozen bottom, and the hook that feeds them to its trainable top.

    Args:
        model: the transformers classifier (its backbone found by ``base_model_prefix``), already frozen by its
            plan: every parameter of the embeddings and of encoder layers ``0 .. first_trainable - 1`` frozen.
        first_trainable: index of the lowest trainable encoder layer (the number of layers for a linear probe).
        batch_size: rows per batch when filling the cache.
    """

    def __init__(self, model: nn.Module, *, first_trainable: int, batch_size: int = 64):
        inner = _unwrap(model)
        self.model = inner
        self.backbone = getattr(inner, backbone_prefix(inner))
        self.layers = encoder_layers(inner)
        self.embeddings = getattr(self.backbone, "embeddings", None)
        self.first_trainable = first_trainable
        self.batch_size = batch_size
        # A probe of a first-token classifier needs two vectors a row, not the whole sequence.
        self.first_token = first_trainable == len(self.layers) and classified_token(inner) == FIRST_TOKEN
        self.has_pooler: bool | None = None
        self.store: dict[bytes, torch.Tensor] | DiskStore = {}
        self.hits = 0
        self.misses = 0
        self._handle = None
        self._patched: list[nn.Module] = []

    # ---- what is frozen ----------------------------------------------------------------------------------------

    def frozen_modules(self) -> list[nn.Module]:
        """The modules the cache replaces, bottom first."""
        if self.first_token:
            return [self.backbone]
        return [self.embeddings, *list(self.layers)[: self.first_trainable]]

    def structure_problem(self) -> str | None:
        """Why this model cannot be cut as the cache needs (``None``: it can)."""
        if self.embeddings is None:
            name = type(self.model).__name__
            return f"{name} has no `embeddings` module under its backbone (BERT-like encoders only)"
        if not any(m is self.layers for m in self.backbone.modules()):
            return "the encoder layers are not part of the backbone"
        for module in self.frozen_modules():
            if any(p.requires_grad for p in module.parameters()):
                return "a module below the first trainable layer has trainable parameters (PEFT or a custom plan)"
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
                return "the frozen part has batch-norm layers, whose statistics change in training mode"
        return None

    # ---- forwards ----------------------------------------------------------------------------------------------

    def _patch(self, modules: Iterable[nn.Module], forward) -> None:
        for module in modules:
            module.forward = forward  # an instance attribute: the class's forward returns when it is deleted
            self._patched.append(module)

    def _unpatch(self) -> None:
        for module in self._patched:
            module.__dict__.pop("forward", None)
        self._patched = []

    def _backbone_from_cache(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any):
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        if inputs_embeds is None:
            raise RuntimeError("frozen-prefix cache: the backbone was skipped but no cached features came")
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=inputs_embeds[:, :1], pooler_output=inputs_embeds[:, 1] if self.has_pooler else None
        )

    def _patch_for_training(self) -> None:
        if self.first_token:
            self._patch([self.backbone], self._backbone_from_cache)
        else:
            self._patch([self.embeddings], _passthrough_embeddings)
            self._patch(list(self.layers)[: self.first_trainable], _passthrough_layer)

    @contextlib.contextmanager
    def _prefix_only(self) -> Iterator[None]:
        """The backbone as the frozen prefix alone: in inference mode, the trainable layers passing through."""
        patched = bool(self._patched)
        self._unpatch()
        training = self.backbone.training
        self.backbone.eval()
        self._patch(list(self.layers)[self.first_trainable:], _passthrough_layer)
        try:
            yield
        finally:
            self._unpatch()
            self.backbone.train(training)
            if patched:
                self._patch_for_training()

    @torch.no_grad()
    def _compute(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The frozen prefix's output for each row of a padded batch, on the CPU: ``(tokens, width)`` per row (the
        real tokens only), or ``(2 or 1, width)`` (first token, pooled output) for a first-token probe."""
        device = next(self.backbone.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with self._prefix_only(), torch.autocast(device.type, enabled=False):
            out = self.backbone(**inputs, return_dict=True)
        mask = inputs["attention_mask"].bool()
        if self.first_token:
            pooled = getattr(out, "pooler_output", None)
            self.has_pooler = pooled is not None
            parts = [out.last_hidden_state[:, 0]] + ([pooled] if pooled is not None else [])
            return list(torch.stack(parts, 1).cpu())
        hidden = out.last_hidden_state
        return [hidden[i][mask[i]].cpu() for i in range(hidden.shape[0])]

    # ---- lookup ------------------------------------------------------------------------------------------------

    @staticmethod
    def keys(inputs: dict[str, torch.Tensor]) -> list[bytes]:
        """One key per row of a padded batch: its real tokens (and token types), independent of the padding."""
        ids = inputs["input_ids"].detach().cpu().long()
        mask = inputs["attention_mask"].detach().cpu().bool()
        types = inputs.get("token_type_ids")
        types = types.detach().cpu().long() if types is not None else None
        out = []
        for i in range(ids.shape[0]):
            key = ids[i][mask[i]].numpy().tobytes()
            if types is not None:
                key += b"|" + types[i][mask[i]].numpy().tobytes()
            out.append(key)
        return out

    def lookup(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The cached frozen-prefix output for a padded batch (``input_ids``, ``attention_mask``, optional
        ``token_type_ids``), computing the rows not cached yet: ``(batch, positions, width)`` with zeros at padding,
        or ``(batch, 2 or 1, width)`` for a first-token probe. On the device of ``input_ids``."""
        inputs = {k: v for k, v in inputs.items() if k in KEY_INPUTS and v is not None}
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        keys = self.keys(inputs)
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            index = torch.tensor(missing)
            rows = self._compute({k: v[index.to(v.device)] for k, v in inputs.items()})
            for i, value in zip(missing, rows):
                self.store[keys[i]] = value
        values = [self.store[key] for key in keys]
        device = inputs["input_ids"].device
        if self.first_token:
            return torch.stack(values).to(device)
        mask = inputs["attention_mask"].detach().cpu().bool()
        out = values[0].new_zeros((*mask.shape, values[0].shape[-1]))
        out[mask] = torch.cat(values)  # row-major order of the mask = the rows' real tokens, one row after another
        return out.to(device)

    def fill(self, tables: Iterable[Any], tokenizer: Any, *, show_progress: bool = True) -> None:
        """Cache every row of ``tables`` (tokenised ``datasets.Dataset`` s, unpadded), longest rows batched together
        so that little is padded."""
        from tqdm.auto import tqdm

        rows: list[dict[str, Any]] = []
        for table in tables:
            if table is None:
                continue
            columns = [c for c in KEY_INPUTS if c in table.column_names]
            rows.extend(table.select_columns(columns))
        rows.sort(key=lambda r: len(r["input_ids"]), reverse=True)
        with tqdm(total=len(rows), desc="caching frozen layers", unit="row",
                  disable=True if not show_progress else None) as bar:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                batch = tokenizer.pad(chunk, padding=True, return_tensors="pt")
                self.lookup(dict(batch))
                bar.update(len(chunk))

    def estimate_bytes(self, tables: Iterable[Any]) -> int:
        """What caching every row of ``tables`` takes in memory (float32 hidden states)."""
        config = getattr(self.model, "config", None)
        width = getattr(config, "hidden_size", None) or next(iter(self.layers.parameters())).shape[-1]
        per_row = 2 * width * 4
        total = 0
        for table in tables:
            if table is None:
                continue
            if self.first_token:
                total += len(table) * per_row
            else:
                lengths = table["length"] if "length" in table.column_names else map(len, table["input_ids"])
                total += sum(int(n) for n in lengths) * width * 4
        return total

    def size_bytes(self) -> int:
        if isinstance(self.store, DiskStore):
            return self.store.nbytes()
        return sum(v.numel() * v.element_size() for v in self.store.values())

    def use_disk(self, *, tokens: int, folder: str | None = None) -> None:
        """Keep the hidden states in a file on disk (:class:`DiskStore`) from now on, room for ``tokens`` tokens;
        rows cached so far move there."""
        config = getattr(self.model, "config", None)
        store = DiskStore(tokens=tokens, width=config.hidden_size, folder=folder)
        for key, value in self.store.items():
            store[key] = value
        self.store = store

    def close(self) -> None:
        """Free the cache (and its file on disk, if any)."""
        if isinstance(self.store, DiskStore):
            self.store.close()
        self.store = {}

    # ---- the hook ----------------------------------------------------------------------------------------------

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:  # positional input_ids (the Trainer passes keywords; a direct call may not)
            kwargs = {**dict(zip(("input_ids", "attention_mask", "token_type_ids"), args)), **kwargs}
            args = ()
        if kwargs.get("inputs_embeds") is not None:
            return None  # the caller embedded the rows itself: nothing to look up
        if kwargs.get("input_ids") is None:
            raise RuntimeError("frozen-prefix cache: the batch has no input_ids to look the cached rows up by")
        if kwargs.get("position_ids") is not None:
            raise RuntimeError("frozen-prefix cache: a batch with position_ids is not one the cache serves")
        embeds = self.lookup(kwargs)
        kwargs = {**kwargs, "input_ids": None, "token_type_ids": None, "inputs_embeds": embeds}
        return args, kwargs

    def attach(self) -> None:
        """Route the model's forward through the cache (until :meth:`detach`)."""
        if self._handle is not None:
            return
        self._patch_for_training()
        # First among the model's pre-hooks does not matter for BERT-like first-token models, and a FeatureTap
        # registered earlier still sees the batch's input_ids.
        self._handle = self.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def detach(self) -> None:
        """Give the model back its ordinary forward."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._unpatch()

    @contextlib.contextmanager
    def attached(self) -> Iterator[FrozenPrefixCache]:
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    @torch.no_grad()
    def check_outputs(self, inputs: dict[str, torch.Tensor], *, atol: float = 1e-4) -> str | None:
        """Run the model on ``inputs`` with and without the cache (inference mode); why they differ, or ``None``."""
        training = self.model.training
        self.model.eval()
        try:
            reference = self.model(**inputs).logits.float()
            with self.attached():
                cached = self.model(**inputs).logits.float()
        except Exception as err:  # an architecture whose forward the cut does not fit
            return f"the model's forward does not run on cached hidden states ({type(err).__name__}: {err})"
        finally:
            self.model.train(training)
        if reference.shape != cached.shape:
            return f"the model's outputs on cached hidden states have another shape ({tuple(cached.shape)})"
        if reference.dim() == 3:  # one output per position (token classification): padding's outputs are unused
            keep = inputs["attention_mask"].bool()
            reference, cached = reference[keep], cached[keep]
        worst = float((reference - cached).abs().max())
        scale = float(reference.abs().max().clamp_min(1.0))
        if not worst <= atol * scale:
            return f"the model's outputs on cached hidden states differ from its own (max difference {worst:.3g})"
        return None


# ---- the recipe's decision -----------------------------------------------------------------------------------------


def first_trainable_layer(model: nn.Module, model_args: Any) -> int | None:
    """Index of the lowest trainable encoder layer under the recipe's freezing plan (``None``: no plan)."""
    total = len(encoder_layers(model))
    if model_args.freeze_backbone:
        return total
    if model_args.trainable_layers is not None:
        return max(total - model_args.trainable_layers, 0)
    return None


def _has_plan(model_args: Any) -> bool:
    return bool(model_args.freeze_backbone or model_args.trainable_layers is not None)


def refusal(recipe: Any, model: nn.Module, task: Any, tokenizer: Any, *, collator_replaced: bool) -> str | None:
    """Why frozen-prefix caching cannot hold for this run (``None``: it can)."""
    m, d, args = recipe.model, recipe.data, recipe.training
    if m.gradual_unfreezing_steps:
        return "gradual_unfreezing_steps unfreezes layers during training, so the frozen part changes"
    if not _has_plan(m):
        return "no freezing plan (set freeze_backbone: true or trainable_layers: N), so nothing is frozen to cache"
    if recipe.peft:
        return "a peft block trains adapters inside the frozen layers"
    if d.streaming:
        return "streaming: true reads each row once per pass, so there is no fixed set of rows to cache"
    for name in recipe.methods.method:
        if name in FULL_FORWARD_METHODS:
            return f"method {name}: {FULL_FORWARD_METHODS[name]}"
    if collator_replaced:
        return "a method replaces the batch collator, so the batches hold rows the cache never saw"
    if "input_ids" not in (getattr(tokenizer, "model_input_names", None) or []):
        return f"task {task.name}: its inputs are not token ids (caching serves text models)"
    from .tasks.base import Task

    if type(task).augment is not Task.augment:
        return f"task {task.name}: its rows may be augmented at random, so a row's frozen features are not fixed"
    if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
        return "FSDP and DeepSpeed shard the model, and the cache needs the frozen layers whole on each process"
    if getattr(args, "n_gpu", 1) > 1:
        return "several GPUs in one process (DataParallel) replicate the model on every step"
    return None


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (``None``: unknown on this platform)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def setup(recipe: Any, model: nn.Module, task: Any, tokenizer: Any, *, tables: list[Any],
          collator_replaced: bool = False) -> FrozenPrefixCache | None:
    """Decide ``cache_frozen`` for a run and, where it is on, fill the cache with the rows of ``tables`` (the
    tokenised training, target and evaluation sets). ``auto``: on where it can hold, else off with the reason
    logged; ``true``: on, or a :class:`~hf_transfer.errors.RecipeError` that says why not; ``false``: off.

    Every process fills its own cache with every row (one forward pass of the frozen part), so any process can
    serve any row the sampler gives it in any epoch."""
    setting = normalise_setting(getattr(recipe.model, "cache_frozen", "auto"))
    if setting == "false":
        return None
    args = recipe.training
    main = getattr(args, "process_index", 0) == 0

    def refuse(reason: str) -> None:
        if setting == "true":
            raise RecipeError(f"cache_frozen: true cannot hold: {reason}. Set cache_frozen: auto (or false)")
        if main and _has_plan(recipe.model):
            logger.info(f"hf-transfer: frozen layers not cached: {reason}")

    reason = refusal(recipe, model, task, tokenizer, collator_replaced=collator_replaced)
    if reason is not None:
        return refuse(reason)
    try:
        first = first_trainable_layer(model, recipe.model)
        cache = FrozenPrefixCache(model, first_trainable=first, batch_size=max(args.per_device_eval_batch_size, 8))
    except UserError as err:  # no backbone or no encoder layers to cut at
        return refuse(str(err))
    model.to(args.device)  # where the Trainer puts it anyway: the cache is filled on the accelerator, if any
    reason = cache.structure_problem()
    if reason is None:
        sample = next((t for t in tables if t is not None and len(t)), None)
        if sample is not None:
            rows = sample.select(range(min(8, len(sample)))).select_columns(
                [c for c in KEY_INPUTS if c in sample.column_names])
            batch = dict(tokenizer.pad(list(rows), padding=True, return_tensors="pt"))
            device = next(model.parameters()).device
            reason = cache.check_outputs({k: v.to(device) for k, v in batch.items()})
    on_disk = False
    if reason is None:
        need, free = cache.estimate_bytes(tables), available_memory()
        if free is not None and need > free // 2:
            folder = os.environ.get(DISK_ENV) or None
            disk = shutil.disk_usage(folder or tempfile.gettempdir()).free
            if cache.first_token or need * 1.1 > disk:
                reason = (f"the cache would take {need / 2**30:.1f} GiB, more than half the {free / 2**30:.1f} GiB of "
                          f"memory free and more than the {disk / 2**30:.1f} GiB free on disk (fewer rows, a shorter "
                          "max_length or more trainable layers make it smaller)")
            else:
                cache.use_disk(tokens=need // (4 * cache.model.config.hidden_size), folder=folder)
                on_disk = True
    if reason is not None:
        return refuse(reason)
    cache.fill(tables, tokenizer, show_progress=not args.disable_tqdm)
    if main:
        layers = len(cache.layers)
        what = ("first-token and pooled features" if cache.first_token else
                f"the input of layer {first}" if first < layers else "the last layer's output")
        where = " on disk" if on_disk else ""
        logger.info(f"hf-transfer: cached {what} of {len(cache.store):,} rows ({cache.size_bytes() / 2**20:.1f} MiB"
                    f"{where}); training runs only the trainable top")
    return cache
