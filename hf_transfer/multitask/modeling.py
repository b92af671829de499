"""``MultiTaskModel``: one pretrained encoder shared by several tasks, one head per task.

The only custom architecture in hf_transfer (DESIGN.md principle 1): a ``PreTrainedModel`` with its own config class,
registered with ``AutoConfig`` / ``AutoModel`` (importing ``hf_transfer`` is enough for
``AutoModel.from_pretrained(folder)``), and every task exports on its own as a plain
``AutoModelForSequenceClassification`` (:meth:`MultiTaskModel.export_task`).

Each task head *is* the head of that architecture's ``...ForSequenceClassification`` class (``classifier`` for BERT,
``pre_classifier`` + ``classifier`` for DistilBERT, ``RobertaClassificationHead`` ...), whose backbone slot holds a
parameter-free stand-in that returns the shared encoder's outputs. So a task's logits are computed by the very code
the exported model runs, and the export is exact for any ``AutoModel`` backbone.

Sharing modes (``config.sharing``):

* ``hard``: one encoder, trained by every task;
* ``soft_lora``: one frozen base encoder with one LoRA adapter per task (PEFT multi-adapter); the task's adapter is
  switched on for its rows;
* ``soft_l2``: one full encoder per task, initialised from the same weights and tied by an L2 penalty
  ``l2_tie_weight * sum_t ||theta_t - mean||^2`` (:func:`~hf_transfer.multitask.losses.l2_tie_penalty`);
* ``shared_private``: a frozen base with a ``shared`` LoRA adapter (every task) plus one private adapter per task, both
  active for a task's rows; the shared and private adapters' outputs are kept orthogonal
  (``orthogonality_weight``), and optionally a task discriminator behind gradient reversal makes the shared adapter's
  features task-invariant (``adversarial_weight``): the adapter form of ASP-MTL (Liu, Qiu & Huang, ACL 2017). Both
  adapters fold into one plain model at export.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_utils import get_torch_context_manager_or_global_device
from transformers.utils import ModelOutput

from ..defaults import DEFAULT_LORA
from ..tasklists.recipe import PROBLEM_TYPES, SHARED_ADAPTER, TASK_NAME_PATTERN
from .losses import TaskDiscriminator, UncertaintyWeighting, l2_tie_penalty, orthogonality_penalty

SHARING_MODES = ("hard", "soft_lora", "soft_l2", "shared_private")
LOSS_WEIGHTINGS = ("static", "uncertainty")
# LoRA fields a multi-task model keeps in its config (the rest of a recipe's `peft:` block is PEFT plumbing).
LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "init_lora_weights",
               "layers_to_transform", "fan_in_fan_out")


class MultiTaskConfig(PreTrainedConfig):
    """Configuration of a :class:`MultiTaskModel`.

    Args:
        encoder_config: the backbone's config (any ``AutoConfig``), or its dict.
        tasks: one dict per task: ``name``, ``num_labels``, ``problem_type`` (``classification`` or ``regression``),
            ``id2label``, ``loss_weight``.
        sharing: one of :data:`SHARING_MODES`.
        lora_config: LoRA fields (``r``, ``lora_alpha``, ``target_modules`` ...) for ``soft_lora`` and
            ``shared_private``.
        loss_weighting: ``static`` (each task's ``loss_weight``) or ``uncertainty`` (Kendall et al. 2018).
        l2_tie_weight: weight of the L2 tie between per-task encoders (``soft_l2``).
        orthogonality_weight, adversarial_weight: weights of the shared-private penalties (``shared_private``).
        discriminator_hidden_size: hidden width of the task discriminator.
        base_model_name_or_path: the Hub id (or folder) the encoder came from, for model cards.
    """

    model_type = "hf_transfer_multitask"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder_config: dict | PreTrainedConfig | None = None
    tasks: list | None = None
    sharing: str = "hard"
    lora_config: dict | None = None
    loss_weighting: str = "static"
    l2_tie_weight: float = 1e-3
    orthogonality_weight: float = 0.01
    adversarial_weight: float = 0.0
    discriminator_hidden_size: int = 128
    base_model_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tasks = [normalize_task(t) for t in (self.tasks or [])]
        if self.sharing not in SHARING_MODES:
            raise ValueError(f"sharing: unknown mode {self.sharing!r}; choose one of {', '.join(SHARING_MODES)}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting: {self.loss_weighting!r}; choose one of {', '.join(LOSS_WEIGHTINGS)}")
        if self.sharing in ("soft_lora", "shared_private"):
            self.lora_config = {**DEFAULT_LORA, **(self.lora_config or {})}

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]


def normalize_task(task: dict[str, Any]) -> dict[str, Any]:
    """A task entry of :class:`MultiTaskConfig` with every key filled and ``id2label`` keyed by int."""
    name = task["name"]
    if not TASK_NAME_PATTERN.fullmatch(str(name)) or name == SHARED_ADAPTER:
        raise ValueError(f"task name {name!r}: use letters, digits and _ (starting with a letter), not 'shared'")
    problem_type = task.get("problem_type", "classification")
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"task {name!r}: problem_type {problem_type!r}; choose one of {', '.join(PROBLEM_TYPES)}")
    num_labels = 1 if problem_type == "regression" else int(task.get("num_labels") or 2)
    id2label = task.get("id2label") or ({0: "score"} if problem_type == "regression"
                                         else {i: f"LABEL_{i}" for i in range(num_labels)})
    id2label = {int(k): str(v) for k, v in id2label.items()}
    if len(id2label) != num_labels:
        raise ValueError(f"task {name!r}: {len(id2label)} label names for {num_labels} labels")
    return {"name": str(name), "num_labels": num_labels, "problem_type": problem_type, "id2label": id2label,
            "loss_weight": float(task.get("loss_weight", 1.0))}


@dataclass
class MultiTaskOutput(ModelOutput):
    """Output of :meth:`MultiTaskModel.forward`.

    Attributes:
        loss: the training loss (weighted task losses plus the sharing penalties), when ``labels`` are given.
        logits: ``(B, C)``; with rows of several tasks, ``C`` is their largest label count and a task's missing
            classes are ``-inf``.
        task_loss: the unweighted task loss (row-weighted mean over the batch's tasks), when ``labels`` are given.
        l2_tie, orthogonality, adversarial: the penalties before their weights, in training mode where they apply.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    task_loss: torch.Tensor | None = None
    l2_tie: torch.Tensor | None = None
    orthogonality: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None


class EncoderOutputs(nn.Module):
    """Stands in for the backbone inside a task head: returns the shared encoder's outputs, computed once.

    Holds no parameters, so a head's state dict is exactly the head of the ``...ForSequenceClassification`` model.
    """

    def __init__(self):
        super().__init__()
        self.outputs: Any = None

    def forward(self, *args, **kwargs):
        if self.outputs is None:
            raise RuntimeError("a task head ran without encoder outputs; call the MultiTaskModel, not the head")
        outputs, self.outputs = self.outputs, None
        return outputs


def head_config(encoder_config: PreTrainedConfig, task: dict[str, Any]) -> PreTrainedConfig:
    """The ``...ForSequenceClassification`` config of one task: the encoder's, with the task's labels."""
    config = copy.deepcopy(encoder_config)
    config.id2label = dict(task["id2label"])
    config.label2id = {v: k for k, v in task["id2label"].items()}
    config.num_labels = task["num_labels"]
    config.problem_type = "regression" if task["problem_type"] == "regression" else "single_label_classification"
    return config


def build_head(encoder_config: PreTrainedConfig, task: dict[str, Any]) -> PreTrainedModel:
    """The task's ``AutoModelForSequenceClassification`` with its backbone replaced by :class:`EncoderOutputs`.

    Built on the meta device (no backbone weights are ever allocated), then materialised and initialised with the
    architecture's own ``_init_weights`` unless we are inside ``from_pretrained`` (which loads the weights)."""
    with torch.device("meta"):
        head = AutoModelForSequenceClassification.from_config(head_config(encoder_config, task))
    setattr(head, head.base_model_prefix, EncoderOutputs())
    device = get_torch_context_manager_or_global_device()
    if device is None or device.type != "meta":
        head.to_empty(device=device or "cpu")
        for module in head.modules():
            module._is_hf_initialized = False
        head.initialize_weights()
    return head


def _mark_initialized(module: nn.Module) -> None:
    """Keep ``initialize_weights`` off modules that already hold real weights (a pretrained encoder, PEFT's LoRA
    initialisation). Not inside ``from_pretrained`` (meta device): there the loader marks what it loaded, and the
    rest (non-persistent buffers such as ``position_ids``) must still be initialised."""
    device = get_torch_context_manager_or_global_device()
    if device is not None and device.type == "meta":
        return
    for m in module.modules():
        m._is_hf_initialized = True


def _lora_layers(module: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]


class _AdapterCapture:
    """Collects what chosen LoRA adapters add at each adapted layer (their ``lora_B`` outputs) during one pass."""

    def __init__(self):
        self.active = False
        self.outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.hooked: set[tuple[int, str]] = set()

    def hook(self, adapter: str):
        def record(module, args, output):  # a closure, not a bound method: deep copies of the encoder share it
            if self.active:
                self.outputs[adapter].append(output)

        return record


class MultiTaskModel(PreTrainedModel):
    """A shared encoder and one head per task; see the module docstring for the sharing modes.

    ``forward(input_ids, attention_mask, token_type_ids, task_ids | task, labels)``: ``task_ids`` ``(B,)`` gives each
    row's task index (``config.task_names``); ``task="name"`` puts every row in one task. Training batches hold one
    task (see :mod:`hf_transfer.multitask.sampling`); mixed batches work too (one encoder pass per task, except with
    hard sharing).
    """

    config_class = MultiTaskConfig
    # No attribute of this name: from_pretrained must not add or strip a prefix from our keys.
    base_model_prefix = "multitask"
    main_input_name = "input_ids"
    # The loss is a per-batch mean over one task's rows plus penalties, not a sum over tokens: the Trainer must not
    # pass num_items_in_batch, and scales the loss for gradient accumulation itself.
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: MultiTaskConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        # PreTrainedConfig.__post_init__ reset the sub-configs' attention implementation; hand ours (resolved by
        # PreTrainedModel.__init__, sdpa where available) down to the encoder config, recursively.
        config._attn_implementation = config._attn_implementation
        base = encoder if encoder is not None else AutoModel.from_config(config.encoder_config)
        self._capture = _AdapterCapture()
        self.encoder: nn.Module | None = None
        self.encoders: nn.ModuleDict | None = None
        if config.sharing == "soft_l2":
            self.encoders = nn.ModuleDict({name: copy.deepcopy(base) for name in config.task_names})
        elif config.sharing in ("soft_lora", "shared_private"):
            self.encoder = self._wrap_lora(base, self._adapter_names(config.task_names))
        else:
            self.encoder = base
        _mark_initialized(self.encoder if self.encoder is not None else self.encoders)
        self.heads = nn.ModuleDict({t["name"]: build_head(config.encoder_config, t) for t in config.tasks})
        self.loss_weights = UncertaintyWeighting(len(config.tasks)) if config.loss_weighting == "uncertainty" else None
        self.discriminator = None
        if config.sharing == "shared_private":
            self._hook_adapters()
            if config.adversarial_weight > 0:
                self.discriminator = TaskDiscriminator(
                    self._shared_feature_dim(), len(config.tasks), hidden_size=config.discriminator_hidden_size
                )
        self.set_trainable(None)
        self.post_init()

    # ---- construction --------------------------------------------------------------------------------------------

    @classmethod
    def from_encoder(
        cls,
        name_or_path: str,
        *,
        tasks: list[dict[str, Any]],
        sharing: str = "hard",
        revision: str | None = None,
        trust_remote_code: bool = False,
        **config_kwargs: Any,
    ) -> MultiTaskModel:
        """A new multi-task model on a pretrained encoder (any ``AutoModel``; packaged offline copies resolve).

        ``config_kwargs`` are :class:`MultiTaskConfig` fields (``lora_config``, ``loss_weighting`` ...)."""
        from ..backbones import _load_error, resolve_model_path

        try:
            encoder = AutoModel.from_pretrained(
                resolve_model_path(name_or_path), revision=revision, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise _load_error(name_or_path, err) from None
        encoder.config._name_or_path = name_or_path
        config = MultiTaskConfig(
            encoder_config=encoder.config, tasks=tasks, sharing=sharing, base_model_name_or_path=name_or_path,
            **config_kwargs,
        )
        return cls(config, encoder=encoder)

    def _adapter_names(self, task_names: list[str]) -> list[str]:
        if self.config.sharing == "shared_private":
            return [SHARED_ADAPTER, *task_names]
        return list(task_names)

    def _lora(self):
        from peft import LoraConfig

        return LoraConfig(**{k: v for k, v in self.config.lora_config.items() if k in LORA_FIELDS})

    def _wrap_lora(self, base: PreTrainedModel, adapters: list[str]):
        from peft import get_peft_model

        if not adapters:
            raise ValueError("a LoRA multi-task model needs at least one task")
        model = get_peft_model(base, self._lora(), adapter_name=adapters[0])
        for name in adapters[1:]:
            model.add_adapter(name, self._lora())
        return model

    def _hook_adapters(self) -> None:
        for _, layer in _lora_layers(self.encoder):
            for adapter, module in layer.lora_B.items():
                key = (id(module), adapter)
                if key not in self._capture.hooked:
                    module.register_forward_hook(self._capture.hook(adapter))
                    self._capture.hooked.add(key)

    def _shared_feature_dim(self) -> int:
        layers = [layer for _, layer in _lora_layers(self.encoder) if SHARED_ADAPTER in layer.lora_B]
        return layers[-1].lora_B[SHARED_ADAPTER].out_features

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Our own new parts: the task discriminator (normal, std ``initializer_range``) and the uncertainty
        log-variances (0, i.e. weight 1). Task heads and the encoder are ``PreTrainedModel``s and use their own
        architecture's ``_init_weights`` (``initialize_weights`` dispatches to them)."""
        std = getattr(self.config.encoder_config, "initializer_range", 0.02) or 0.02
        if isinstance(module, UncertaintyWeighting):
            init.zeros_(module.log_vars)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)

    # ---- tasks ---------------------------------------------------------------------------------------------------

    @property
    def task_names(self) -> list[str]:
        return self.config.task_names

    def task_index(self, name: str) -> int:
        try:
            return self.task_names.index(name)
        except ValueError:
            raise KeyError(f"unknown task {name!r}; this model has {', '.join(self.task_names)}") from None

    def task_config(self, name: str) -> dict[str, Any]:
        return self.config.tasks[self.task_index(name)]

    def add_task(
        self,
        name: str,
        *,
        num_labels: int = 2,
        problem_type: str = "classification",
        id2label: dict[int, str] | None = None,
        loss_weight: float = 1.0,
    ) -> None:
        """Add a task to a (trained) model: a new head, and with ``soft_lora`` / ``shared_private`` a new adapter,
        with ``soft_l2`` a new encoder starting from the mean of the others. Nothing existing changes; call
        :meth:`set_trainable` with ``[name]`` to train only the new parts."""
        if name in self.task_names:
            raise ValueError(f"task {name!r} already exists")
        task = normalize_task({"name": name, "num_labels": num_labels, "problem_type": problem_type,
                               "id2label": id2label, "loss_weight": loss_weight})
        device = next(self.parameters()).device
        self.config.tasks = [*self.config.tasks, task]
        head = build_head(self.config.encoder_config, task).to(device)
        self.heads[name] = head
        if self.config.sharing == "soft_l2":
            encoder = copy.deepcopy(next(iter(self.encoders.values())))
            with torch.no_grad():
                others = [list(e.parameters()) for e in self.encoders.values()]
                for param, group in zip(encoder.parameters(), zip(*others)):
                    param.copy_(torch.stack(list(group)).mean(0))
            self.encoders[name] = encoder
        elif self.config.sharing in ("soft_lora", "shared_private"):
            self.encoder.add_adapter(name, self._lora())
            self.encoder.to(device)
            if self.config.sharing == "shared_private":
                self._hook_adapters()
        if self.loss_weights is not None:
            self.loss_weights.grow(len(self.config.tasks))

    def set_trainable(self, tasks: list[str] | None = None) -> None:
        """Choose what trains. ``None``: everything multi-task training trains (the shared encoder with ``hard``, all
        adapters or encoders, all heads; the LoRA base stays frozen). A list: only those tasks' own parts (head,
        adapter, encoder); shared parts are frozen, so the other tasks' outputs cannot change."""
        train_shared = tasks is None
        names = set(self.task_names if tasks is None else tasks)
        unknown = names - set(self.task_names)
        if unknown:
            raise KeyError(f"unknown tasks {sorted(unknown)}")
        self.requires_grad_(False)
        for name in names:
            self.heads[name].requires_grad_(True)
        if self.config.sharing == "hard":
            self.encoder.requires_grad_(train_shared)
        elif self.config.sharing == "soft_l2":
            for name in names:
                self.encoders[name].requires_grad_(True)
        else:
            adapters = set(names) | ({SHARED_ADAPTER} if train_shared and self.config.sharing == "shared_private"
                                     else set())
            for _, layer in _lora_layers(self.encoder):
                for attr in layer.adapter_layer_names:
                    for adapter, part in getattr(layer, attr).items():
                        if adapter in adapters:
                            part.requires_grad_(True)
        if self.loss_weights is not None:
            self.loss_weights.requires_grad_(True)
        if self.discriminator is not None:
            self.discriminator.requires_grad_(train_shared)

    # ---- forward -------------------------------------------------------------------------------------------------

    def _activate(self, task: str) -> None:
        """Switch the LoRA adapters a task's rows run with. Sets the layers' active adapters directly: PEFT's
        ``set_adapter`` would also flip ``requires_grad`` of every other adapter, which must stay as
        :meth:`set_trainable` left it (and as DDP saw it at wrap time)."""
        active = [SHARED_ADAPTER, task] if self.config.sharing == "shared_private" else [task]
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.encoder.modules():
            if isinstance(module, BaseTunerLayer):
                module._active_adapter = active

    def _encode(self, task: str, inputs: dict[str, torch.Tensor]):
        if self.config.sharing == "soft_l2":
            return self.encoders[task](**inputs, return_dict=True)
        if self.config.sharing in ("soft_lora", "shared_private"):
            self._activate(task)
        return self.encoder(**inputs, return_dict=True)

    def _head(self, task: str, outputs, input_ids, attention_mask) -> torch.Tensor:
        head = self.heads[task]
        getattr(head, head.base_model_prefix).outputs = outputs
        return head(input_ids=input_ids, attention_mask=attention_mask).logits

    def _task_loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task_config(task)["problem_type"] == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels.long())

    def _weighted(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        config = self.task_config(task)
        if self.loss_weights is not None:
            return self.loss_weights(loss, self.task_index(task), regression=config["problem_type"] == "regression")
        return config["loss_weight"] * loss

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task_ids: torch.Tensor | int | None = None,
        labels: torch.Tensor | None = None,
        task: str | None = None,
        return_dict: bool | None = None,
    ) -> MultiTaskOutput:
        if input_ids is None:
            raise ValueError("MultiTaskModel needs input_ids")
        batch = input_ids.shape[0]
        if task is not None:
            task_ids = torch.full((batch,), self.task_index(task), dtype=torch.long, device=input_ids.device)
        elif task_ids is None:
            raise ValueError(f"say which task each row belongs to: task_ids or task= (one of {self.task_names})")
        elif isinstance(task_ids, int):
            task_ids = torch.full((batch,), task_ids, dtype=torch.long, device=input_ids.device)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        present = torch.unique(task_ids).tolist()
        single = len(present) == 1
        shared_outputs = None
        if self.config.sharing == "hard" and not single:
            shared_outputs = self.encoder(**inputs, return_dict=True)  # one pass, then each head takes its rows
        capture = self.training and self.config.sharing == "shared_private"
        width = max(self.config.tasks[t]["num_labels"] for t in present)
        logits = None
        loss = task_loss = None
        penalties: dict[str, torch.Tensor] = {}
        for t in present:
            name = self.task_names[t]
            rows = None if single else (task_ids == t).nonzero(as_tuple=True)[0]
            sub = inputs if rows is None else {k: v[rows] for k, v in inputs.items()}
            if shared_outputs is not None:
                outputs = _select_rows(shared_outputs, rows)
            else:
                self._capture.outputs.clear()
                self._capture.active = capture
                try:
                    outputs = self._encode(name, sub)
                finally:
                    self._capture.active = False
            task_logits = self._head(name, outputs, sub["input_ids"], sub["attention_mask"])
            if capture:
                for key, value in self._shared_private_penalties(name, sub["attention_mask"]).items():
                    penalties[key] = penalties.get(key, 0) + value * task_logits.shape[0] / batch
            if single:
                logits = task_logits
            else:
                if logits is None:
                    logits = task_logits.new_full((batch, width), float("-inf"))
                logits[rows, : task_logits.shape[-1]] = task_logits
            if labels is not None:
                sub_labels = labels if rows is None else labels[rows]
                raw = self._task_loss(name, task_logits, sub_labels)
                share = sub_labels.shape[0] / batch
                task_loss = raw * share if task_loss is None else task_loss + raw * share
                weighted = self._weighted(name, raw) * share
                loss = weighted if loss is None else loss + weighted
        if self.training and self.config.sharing == "soft_l2":
            penalties["l2_tie"] = l2_tie_penalty(list(self.encoders.values()))
        if loss is not None:
            weights = {"l2_tie": self.config.l2_tie_weight, "orthogonality": self.config.orthogonality_weight,
                       "adversarial": self.config.adversarial_weight}
            for key, value in penalties.items():
                if weights[key]:
                    loss = loss + weights[key] * value
        return MultiTaskOutput(loss=loss, logits=logits, task_loss=task_loss, **penalties)

    def _shared_private_penalties(self, task: str, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Orthogonality of the shared and private adapters' outputs, layer by layer (each ``(B, L, d)`` output
        mean-pooled over the real tokens to ``(B, d)``), and the adversarial task loss on the shared adapter's
        output at the last adapted layer."""
        shared = self._capture.outputs.get(SHARED_ADAPTER, [])
        private = self._capture.outputs.get(task, [])
        self._capture.outputs.clear()
        if len(shared) != len(private) or not shared:
            raise RuntimeError(f"shared_private: captured {len(shared)} shared and {len(private)} private layers")
        pooled_s = [_masked_mean(s, attention_mask) for s in shared]
        pooled_p = [_masked_mean(p, attention_mask) for p in private]
        out = {"orthogonality": sum(orthogonality_penalty(s, p) for s, p in zip(pooled_s, pooled_p))}
        index = self.task_index(task)
        disc = self.discriminator
        if disc is not None and index < disc.num_tasks and any(p.requires_grad for p in disc.parameters()):
            feature = pooled_s[-1]
            if feature.shape[-1] != disc.net[0].in_features:
                raise RuntimeError("shared_private: the last adapted layer's width differs from the discriminator's")
            out["adversarial"] = disc.loss(feature, index)
        return out

    # ---- export --------------------------------------------------------------------------------------------------

    def task_encoder(self, name: str) -> PreTrainedModel:
        """A plain copy of the encoder one task runs with (its LoRA adapters merged in), detached from this model."""
        self.task_index(name)
        if self.config.sharing == "soft_l2":
            return copy.deepcopy(self.encoders[name])
        if self.config.sharing == "hard":
            return copy.deepcopy(self.encoder)
        adapters = [SHARED_ADAPTER, name] if self.config.sharing == "shared_private" else [name]
        peft_copy = copy.deepcopy(self.encoder)
        return peft_copy.merge_and_unload(adapter_names=adapters)

    @torch.no_grad()
    def export_task(self, name: str) -> PreTrainedModel:
        """Task ``name`` as a plain ``AutoModelForSequenceClassification`` (the task's encoder with its adapters
        merged, and its head): save it with ``save_pretrained`` and ``pipeline()`` loads it, no hf_transfer needed."""
        head = self.heads[name]
        encoder = self.task_encoder(name)
        model = AutoModelForSequenceClassification.from_config(head.config)
        prefix = model.base_model_prefix
        state = {f"{prefix}.{k}": v for k, v in encoder.state_dict().items()}
        state.update(head.state_dict())
        target = model.state_dict()
        missing = sorted(set(target) - set(state))
        if missing:
            raise RuntimeError(f"export of task {name!r}: no weights for {missing[:5]}")
        model.load_state_dict({k: state[k] for k in target}, strict=True)
        model.config._name_or_path = self.config.base_model_name_or_path or ""
        return model.to(next(self.parameters()).device).eval()


def _masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, L, d) -> (B, d)``, the mean over the real tokens; ``(B, d)`` passes through."""
    if hidden.dim() == 2:
        return hidden
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _select_rows(outputs: ModelOutput, rows: torch.Tensor) -> ModelOutput:
    """The same model output class, restricted to some rows (tensors and tuples of tensors)."""
    values = {}
    for key, value in outputs.items():
        if torch.is_tensor(value):
            values[key] = value[rows]
        elif isinstance(value, tuple):
            values[key] = tuple(v[rows] if torch.is_tensor(v) else v for v in value)
        else:
            values[key] = value
    return type(outputs)(**values)


def register_auto_classes() -> None:
    """``AutoConfig`` / ``AutoModel`` learn ``model_type: hf_transfer_multitask`` (idempotent)."""
    try:
        AutoConfig.register(MultiTaskConfig.model_type, MultiTaskConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModel.register(MultiTaskConfig, MultiTaskModel)
    except ValueError:
        pass
