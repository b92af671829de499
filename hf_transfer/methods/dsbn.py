"""``method: dsbn`` — domain-specific batch normalisation during adversarial / discrepancy training (after Chang, You,
Seo, Kwak & Han 2019, "Domain-Specific Batch Normalization for Unsupervised Domain Adaptation", CVPR).

A paired training batch holds the source rows, then the target rows, and goes through the model once. Plain batch
norm would normalise both with the statistics of the mixed batch, so each domain is shifted and scaled by the other's
statistics and the features a discriminator (DANN, CDAN) or a kernel (MMD) compares are partly normalised away.
With ``dsbn`` every training batch-norm layer normalises the source rows with the source rows' statistics and the
target rows with the target rows' (the scale and shift weights stay shared). The running statistics follow the
target rows only, so evaluation and the exported model (a plain model: its batch-norm buffers are the target's
statistics) normalise with the target domain's statistics. Add ``adabn`` to re-estimate them exactly at the end.

How the split reaches the layers: this method's ``prepare`` hook wraps the collator, which adds the number of source
rows of each paired batch (:data:`SPLIT_KEY`, a plain int); a forward pre-hook on the model takes that key out of
the inputs before the model's own forward sees it, and the layers read it for the duration of that forward.
Evaluation batches and frozen (eval-mode) layers are untouched. Combine it with a method that pairs source and
target batches (dann, mmd, cdan, coral, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import RecipeError
from ._batchnorm import (
    BatchNorm,
    RunAtTrainEnd,
    context_callbacks,
    replace_forward,
    require_batch_norm,
    restore_forward,
)
from .base import MethodConfig
from .registry import register_method

logger = logging.getLogger(__name__)

#: The batch key the wrapped collator adds (the number of source rows, which come first); the model never sees it.
SPLIT_KEY = "dsbn_num_source"


@dataclass
class DSBNConfig(MethodConfig):
    """``dsbn`` has no fields of its own (``trade_off`` is unused: it adds no loss)."""


class DomainSplit:
    """The number of source rows of the paired batch now in the model's forward (``None`` outside one)."""

    def __init__(self):
        self.num_source: int | None = None


def domain_batch_norm(layer: BatchNorm, split: DomainSplit):
    """``layer``'s forward, normalising the rows ``[:k]`` and ``[k:]`` of a training batch separately
    (``k = split.num_source``): the source rows with their own batch statistics (running buffers untouched), the target
    rows with theirs, updating the running buffers as the layer would on the target rows alone. Anything else (eval
    mode, no split, a batch of one domain) is the layer's own forward."""
    own_forward = type(layer).forward.__get__(layer)

    def forward(x: torch.Tensor) -> torch.Tensor:
        k = split.num_source
        if not layer.training or k is None or not 0 < k < x.shape[0]:
            return own_forward(x)
        momentum = 0.0 if layer.momentum is None else layer.momentum
        if layer.num_batches_tracked is not None:
            layer.num_batches_tracked.add_(1)
            if layer.momentum is None:  # cumulative average, as BatchNorm does with momentum None
                momentum = 1.0 / float(layer.num_batches_tracked)
        source = F.batch_norm(x[:k], None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
        target = F.batch_norm(x[k:], layer.running_mean, layer.running_var, layer.weight, layer.bias, True, momentum,
                              layer.eps)
        return torch.cat([source, target])

    return forward


class SplitCollator:
    """Wraps the task collator: a paired batch (one with ``domain``) gets :data:`SPLIT_KEY`, the number of source
    rows. Refuses a batch whose rows are not source-first (the layers split by position)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(rows)
        domain = batch.get("domain")
        if domain is not None:
            k = int((domain == 0).sum())
            if bool((domain[:k] != 0).any()) or bool((domain[k:] != 1).any()):
                raise RecipeError("dsbn: a training batch does not hold its source rows first; dsbn needs the paired "
                                  "batches of the transfer collators")
            batch[SPLIT_KEY] = k
        return batch


def prepare_dsbn(config: DSBNConfig, context: dict[str, Any]) -> dict[str, Any]:
    """Patch the model's batch-norm layers for the run, and take the patch off again when training ends."""
    if not any(m.needs_target for m in context["methods"].values()):
        raise RecipeError("method: dsbn normalises the source and target rows of paired batches separately; add a "
                          "method that trains on both domains (dann, mmd, cdan, coral ...), e.g. method: [dann, dsbn]")
    if getattr(context["args"], "gradient_checkpointing", False):
        raise RecipeError("gradient_checkpointing: dsbn splits batch norm per domain during the forward pass, which "
                          "the recomputed forward would not do; set gradient_checkpointing: false")
    model = context["model"]
    layers = require_batch_norm("dsbn", model)
    if all(bn.weight is not None and not bn.weight.requires_grad for _, bn in layers):
        # Frozen batch norms stay in inference mode (the image task keeps them so): there is nothing to split.
        logger.warning("hf-transfer: dsbn changes nothing here: every batch-norm layer is frozen (freeze_backbone or "
                       "trainable_layers); adabn adapts a frozen backbone's statistics to the target")
    split = DomainSplit()
    for _, layer in layers:
        replace_forward(layer, domain_batch_norm(layer, split))

    def take_split(module, args, kwargs):
        split.num_source = kwargs.pop(SPLIT_KEY, None)
        return args, kwargs

    def clear_split(module, args, kwargs, output):
        split.num_source = None

    handles = [model.register_forward_pre_hook(take_split, with_kwargs=True),
               model.register_forward_hook(clear_split, with_kwargs=True, always_call=True)]

    def unpatch(_model) -> None:
        for _, layer in layers:
            restore_forward(layer)
        for handle in handles:
            handle.remove()

    context_callbacks("dsbn", context).append(RunAtTrainEnd(unpatch))
    context["collator"] = SplitCollator(context["collator"])
    return context


register_method("dsbn", DSBNConfig, prepare=prepare_dsbn)
