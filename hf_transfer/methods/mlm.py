"""``method: mlm`` — a masked-language-model loss on the unlabelled target texts during task training (UDALM:
Karouzos, Paraskevopoulos & Potamianos 2021, "UDALM: Unsupervised Domain Adaptation through Language Modeling",
NAACL), so the encoder keeps modelling the target domain's language while it learns the task on the source.

How a step runs:

* the collator (wrapped by this method's ``prepare`` hook) appends a masked copy of each target row (with
  ``include_source: true``, of each source row too) after the batch's rows, masked as
  ``transformers.DataCollatorForLanguageModeling`` masks (that class does it: ``mlm_probability`` of the non-special
  tokens are chosen, 80% of them become ``[MASK]``, 10% a random token, 10% stay), from a seeded generator; it adds
  ``mlm_positions`` (flat indices of the chosen tokens in the padded batch) and ``mlm_labels`` (their original ids);
* the model runs once on all rows (the classifier's rows and the masked copies); the task loss and every other
  method see only the batch's own rows (:class:`~hf_transfer.methods.base.TransferMethod`);
* a forward hook on the backbone keeps its token states; this method runs the MLM head on the chosen positions only
  and returns the mean cross-entropy over them (under several processes, the mean over every process's tokens:
  :func:`hf_transfer.distributed.global_mean_scale`).

The MLM head is the architecture's own (``BertOnlyMLMHead`` for BERT, ``RobertaLMHead`` for RoBERTa ...: the head of
its ``AutoModelForMaskedLM``), its transform loaded from the checkpoint when the checkpoint has it and freshly
initialised otherwise (sentence-transformers exports such as all-MiniLM-L6-v2 ship no MLM head); its output layer
is tied to the classifier's input embeddings, read at every step (so with LoRA the frozen embeddings stay frozen and
shared; with full fine-tuning the MLM loss trains them, as in pretraining). The head's transform and output bias
train with the model, are saved in checkpoints for resume and are never exported: the result is a plain sequence
classifier. Architectures whose masked-LM model has no single head module (DistilBERT) are refused.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RecipeError
from ..masking import Masking
from ._layers import check_trade_off
from ._pretrained import Unregistered, methods_of, refuse_sharded_engines
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method

logger = logging.getLogger(__name__)

#: The batch keys the wrapped collator adds and the method reads.
POSITIONS_KEY, LABELS_KEY = "mlm_positions", "mlm_labels"


@dataclass
class MLMConfig(Masking, MethodConfig):
    """Fields of ``mlm``: what is masked (``include_source``) and how (the fields of :class:`Masking`)."""

    include_source: bool = field(
        default=False, metadata={"help": "Mask and predict the source texts too (default: the target texts only)."}
    )
    seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the masking generator (default: the training seed); each process adds its rank."},
    )

    def __post_init__(self):
        check_trade_off("mlm", self.trade_off)
        self.check_masking("mlm.")


# ---- the collator ------------------------------------------------------------------------------------------------


class MaskedLMCollator:
    """Wraps the task collator: to a paired training batch (one with ``domain``) it appends masked copies of the
    target rows (and of the source rows with ``include_source``) and adds ``mlm_positions`` / ``mlm_labels``.
    Evaluation batches (no ``domain``) pass through unchanged."""

    def __init__(self, collator, tokenizer, config: MLMConfig, *, seed: int):
        from ..data import MODEL_INPUT_KEYS

        self.collator = collator
        self.include_source = config.include_source
        self.input_keys = MODEL_INPUT_KEYS
        self.masker = config.masker(tokenizer, seed=seed)

    def mask(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked input_ids, labels)``: labels -100 where no prediction is asked. Seeded, per dataloader worker."""
        if self.masker.generator is None:
            self.masker.create_rng()  # seed (+ worker id inside a dataloader worker)
        return self.masker.torch_mask_tokens(input_ids.clone())

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(rows)
        domain = batch.get("domain")
        if domain is None:
            return batch
        chosen = torch.ones_like(domain, dtype=torch.bool) if self.include_source else domain == 1
        index = chosen.nonzero().flatten()  # on the host, in the collator: no device is waiting
        rows_before, length = batch["input_ids"].shape
        masked, labels = self.mask(batch["input_ids"][index])
        for key in self.input_keys:
            value = batch.get(key)
            if torch.is_tensor(value) and value.shape[:1] == (rows_before,):
                batch[key] = torch.cat([value, masked if key == "input_ids" else value[index]])
        flat = labels.flatten()
        picked = (flat != -100).nonzero().flatten()
        batch[POSITIONS_KEY] = picked + rows_before * length
        batch[LABELS_KEY] = flat[picked]
        return batch


# ---- the head ----------------------------------------------------------------------------------------------------


class TiedOutput(nn.Module):
    """The MLM head's output layer: ``hidden @ E^T + bias`` with ``E`` the classifier's input embedding matrix, read
    at every call. ``E`` is not registered here (it belongs to the model: trained, saved and exported there), nor
    is a bias the head registers elsewhere already (BERT's ``predictions.bias``): a tensor saved under two names is
    refused by safetensors."""

    def __init__(
        self, embeddings: nn.Embedding, bias: nn.Parameter | None, *, bias_registered_elsewhere: bool = False
    ):
        super().__init__()
        self._embeddings = Unregistered(embeddings)
        self._shared_bias = Unregistered(bias) if bias_registered_elsewhere else None
        self.bias = None if bias_registered_elsewhere else bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self._shared_bias is None else self._shared_bias.value
        return F.linear(hidden, self._embeddings.value.weight, bias)


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load report silenced: loading a masked-LM model from a checkpoint without a masked-LM head (its
    head missing from a sentence-transformers export, a classifier's pooler unexpected) is the expected case here,
    which the report describes as a fault; the callers log what matters instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def build_mlm_head(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The architecture's masked-LM head for ``model`` (a sequence classifier, PEFT-wrapped or not), with its output
    layer tied to ``model``'s input embeddings. Returns ``(head, missing)``: ``missing`` names the head's weights the
    checkpoint lacked (freshly initialised; empty when it was loaded whole)."""
    from transformers import AutoModelForMaskedLM

    from ..backbones import _unwrap, resolve_model_path

    classifier = _unwrap(model)
    config = classifier.config
    # load_classifier keeps the name the recipe gave (a Hub id with a packaged copy, say): resolve it as it did.
    source = getattr(config, "_name_or_path", "") or getattr(classifier, "name_or_path", "")
    source = resolve_model_path(source) if source else source
    try:
        with quiet_transformers():
            if source:
                lm, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True)
            else:  # a model built from a config: nothing to load
                lm, info = AutoModelForMaskedLM.from_config(config), {"missing_keys": ()}
    except ValueError as err:  # no masked-LM class for this architecture
        raise RecipeError(
            f"method: mlm needs a masked-LM head for {config.model_type!r}, which transformers does not have "
            f"({str(err).splitlines()[0]}); use an encoder such as BERT, RoBERTa or MiniLM"
        ) from None
    prefix = lm.base_model_prefix
    heads = [(n, m) for n, m in lm.named_children() if n != prefix and any(True for _ in m.parameters())]
    output = lm.get_output_embeddings()
    if len(heads) != 1 or output is None:
        raise RecipeError(
            f"method: mlm: {type(lm).__name__} has no single masked-LM head module "
            f"({', '.join(n for n, _ in heads)}); use an architecture with one (BERT, RoBERTa, XLM-R, ALBERT ...)"
        )
    head_name, head = heads[0]
    output_path = next(n for n, m in head.named_modules() if m is output)
    parent_name, _, attribute = output_path.rpartition(".")
    parent = head.get_submodule(parent_name) if parent_name else head
    embeddings = classifier.get_input_embeddings()
    if embeddings.weight.shape[-1] != output.in_features:
        raise RecipeError(f"method: mlm: the {head_name} head's output layer does not fit the input embeddings")
    elsewhere = output.bias is not None and any(
        p is output.bias and not n.startswith(f"{output_path}.")
        for n, p in head.named_parameters(remove_duplicate=False)
    )
    setattr(parent, attribute, TiedOutput(embeddings, output.bias, bias_registered_elsewhere=elsewhere))
    missing = sorted(k for k in info["missing_keys"] if k.startswith(f"{head_name}.") and "decoder.weight" not in k)
    del lm
    return head, missing


class TokenStates:
    """Forward hook on the backbone that keeps its last token states ``(rows, length, hidden)`` in training mode.

    A small object of its own rather than a method of :class:`MLM`, so that copying the model (a merged export, a
    frozen reference) copies an empty keeper, not the MLM method and what it holds."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        if module.training:  # evaluation never asks for the MLM loss
            self.value = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def pop(self) -> torch.Tensor | None:
        value, self.value = self.value, None
        return value

    def __deepcopy__(self, memo: dict) -> TokenStates:
        return TokenStates()


class MLM(TransferMethod):
    """Masked-LM loss on the masked rows the wrapped collator appended. Logs ``accuracy``: the fraction of masked
    tokens predicted right (on this process's rows)."""

    needs_target = True
    batch_keys = (POSITIONS_KEY, LABELS_KEY)

    def __init__(self, config: MLMConfig, *, feature_dim: int, num_labels: int):
        super().__init__(config, feature_dim=feature_dim, num_labels=num_labels)
        self.head: nn.Module | None = None
        self._states = TokenStates()
        self._hook = None

    def bind(self, model: nn.Module, head: nn.Module) -> None:
        """Train ``head`` (from :func:`build_mlm_head`) on the token states of ``model``'s backbone."""
        from ..backbones import _unwrap, backbone_prefix

        self.head = head
        backbone = getattr(_unwrap(model), backbone_prefix(model))
        if self._hook is not None:
            self._hook.remove()
        self._hook = backbone.register_forward_hook(self._states)

    def forward(self, batch: StepBatch) -> MethodOutput:
        if self.head is None:
            raise RuntimeError("mlm: no head bound; its prepare hook runs in hf_transfer.train")
        if POSITIONS_KEY not in batch.extras:
            raise RuntimeError("mlm: the batch has no masked rows; the training collator was not wrapped")
        from ..distributed import global_mean_scale

        states = self._states.pop()
        if states is None:
            raise RuntimeError("mlm: the backbone did not run in training mode during this step")
        positions, labels = batch.extras[POSITIONS_KEY], batch.extras[LABELS_KEY]
        chosen = states.flatten(0, 1).index_select(0, positions)
        scores = self.head(chosen).float()
        total = F.cross_entropy(scores, labels, reduction="sum")
        count = torch.full((), labels.shape[0], device=scores.device, dtype=torch.float32)
        loss = total * global_mean_scale(count)  # the mean over every process's chosen tokens
        accuracy = (scores.detach().argmax(-1) == labels).float().sum() / count.clamp_min(1)
        return MethodOutput(loss, {"accuracy": accuracy})


def mlm_prepare(config: MLMConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: build the tied MLM head and wrap the collator to add the masked rows."""
    refuse_sharded_engines("mlm", context.get("args"))
    tokenizer = context["tokenizer"]
    if getattr(tokenizer, "mask_token", None) is None:
        raise RecipeError("method: mlm needs a tokenizer with a mask token (a text model such as BERT)")
    model = context["model"]
    args = context.get("args")
    for method in methods_of(context, MLM, "mlm"):
        head, missing = build_mlm_head(model)
        if missing:
            logger.info("mlm: the checkpoint has no masked-LM head (%s); the head starts from random weights",
                        ", ".join(missing))
        else:
            logger.info("mlm: masked-LM head loaded from the checkpoint")
        context["metrics"]["mlm/head_from_checkpoint"] = not missing
        method.bind(model, head)
    seed = config.seed if config.seed is not None else getattr(args, "seed", 0)
    rank = getattr(args, "process_index", 0)
    context["collator"] = MaskedLMCollator(context["collator"], tokenizer, config, seed=seed + rank)
    return context


register_method("mlm", MLMConfig, MLM, prepare=mlm_prepare)
