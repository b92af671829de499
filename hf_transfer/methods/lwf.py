"""``method: lwf`` — keep the features close to those of the pretrained network (feature distillation in the manner
of Learning without Forgetting, Li & Hoiem 2017, TPAMI, and of DELTA's feature-map regulariser, Li et al. 2019).

A frozen copy of the model, taken before training, runs (in eval mode, without gradients) on the same rows as the
model; the loss is the distance between the model's features (the input of the classifier's output layer, as every
method sees them) and the copy's:

* ``mse``: mean over rows and feature dimensions of ``(f - f0)^2`` (``F.mse_loss``);
* ``cosine``: mean over rows of ``1 - cos(f, f0)``, blind to the features' scale.

Rows: every row of the batch (``rows: all``; with a target set, the unlabelled target rows too) or the labelled
source rows only (``rows: source``). The copy is held out of the method's module tree: not in checkpoints (rebuilt
from the pretrained model on resume), not optimised, not exported. It costs one extra forward pass per step (no
backward) and one copy of the model's memory. With a two-layer classification head (RoBERTa-style) the feature
includes the head's hidden layer, whose reference is its initial (random) weights: use ``feature_module`` to pick
the backbone's output instead.

Under several processes each process runs the copy on its own rows and gathers the result, to line up with the
global batch of features (:func:`hf_transfer.distributed.gather_batch_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ._layers import check_choice, check_trade_off, full_precision
from ._pretrained import Unregistered, frozen_copy, methods_of, on_device, refuse_sharded_engines
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method

DISTANCES = ("mse", "cosine")
ROWS = ("all", "source")


@dataclass
class LwFConfig(MethodConfig):
    """Fields of ``lwf``: the distance and the rows it is taken over."""

    distance: Literal["mse", "cosine"] = field(
        default="mse",
        metadata={"help": "'mse': mean squared difference per feature; 'cosine': mean of 1 - cos(f, f0) per row."},
    )
    rows: Literal["all", "source"] = field(
        default="all", metadata={"help": "Rows distilled: 'all' rows of the batch, or the labelled 'source' rows."}
    )

    def __post_init__(self):
        check_trade_off("lwf", self.trade_off)
        check_choice("lwf.distance", self.distance, DISTANCES)
        check_choice("lwf.rows", self.rows, ROWS)


def feature_distance(
    features: torch.Tensor, reference: torch.Tensor, *, distance: str = "mse", row_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean distance between ``features (B, D)`` and ``reference (B, D)`` row by row (see the module docstring),
    over the rows where ``row_weight`` is 1 (all rows when ``None``)."""
    if distance == "mse":
        per_row = (features - reference).pow(2).mean(1)
    elif distance == "cosine":
        per_row = 1.0 - F.cosine_similarity(features, reference, dim=1)
    else:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    if row_weight is None:
        return per_row.mean()
    return (per_row * row_weight).sum() / row_weight.sum().clamp_min(1)


class LwF(TransferMethod):
    """Distance between ``batch.features`` and the frozen pretrained copy's features on the same rows."""

    def __init__(self, config: LwFConfig, *, feature_dim: int, num_labels: int):
        super().__init__(config, feature_dim=feature_dim, num_labels=num_labels)
        self._reference: Unregistered | None = None
        self._tap = None

    def bind(self, model: torch.nn.Module, feature_module: torch.nn.Module) -> None:
        """Take the frozen copy of ``model`` (call before training); ``feature_module`` is the module of ``model``
        whose input is ``StepBatch.features`` (its namesake in the copy gives the reference features)."""
        from ..backbones import FeatureTap

        name = next((n for n, m in model.named_modules() if m is feature_module), None)
        if name is None:
            raise RuntimeError("lwf: the feature module is not part of the model")
        reference = frozen_copy(model)
        self._reference = Unregistered(reference)
        self._tap = Unregistered(FeatureTap(dict(reference.named_modules())[name]))

    @torch.no_grad()
    def reference_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen copy's features for the model ``inputs`` (this process's rows)."""
        reference = on_device(self._reference.value, next(iter(inputs.values())).device)
        reference(**inputs)
        return self._tap.value.pop()

    def forward(self, batch: StepBatch) -> MethodOutput:
        if self._reference is None:
            raise RuntimeError("lwf: no reference model bound; its prepare hook runs in hf_transfer.train")
        if not batch.inputs:
            raise RuntimeError("lwf: the step batch carries no model inputs to run the reference model on")
        from ..distributed import gather_batch_rows

        c: LwFConfig = self.config
        reference = gather_batch_rows(self.reference_features(batch.inputs))
        with full_precision(batch.features):
            weight = (batch.domain == 0).float() if c.rows == "source" else None
            loss = feature_distance(batch.features.float(), reference.float(), distance=c.distance, row_weight=weight)
        return MethodOutput(loss)


def lwf_prepare(config: LwFConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: give every ``lwf`` method its frozen copy of the model, taken before training."""
    refuse_sharded_engines("lwf", context.get("args"))
    for method in methods_of(context, LwF, "lwf"):
        method.bind(context["model"], context["feature_module"])
    return context


register_method("lwf", LwFConfig, LwF, prepare=lwf_prepare)
