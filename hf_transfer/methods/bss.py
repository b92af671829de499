"""``method: bss`` — batch spectral shrinkage (Chen, Wang, Fu, Long & Wang 2019, "Catastrophic Forgetting Meets
Negative Transfer: Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS).

    loss = sum_{i=1..k} sigma_{-i}(F)^2

the ``k`` smallest squared singular values of the batch's feature matrix ``F`` (rows x feature_dim), weighted by
``trade_off`` (the paper's ``eta``, 0.001 there and in TLlib; ``k = 1``). Fine-tuning on few labelled rows lets the
small spectral components of the pretrained features grow and carry source-specific (untransferable) detail;
shrinking them suppresses that negative transfer. It adds no parameters.

Rows: the labelled source rows (``rows: source``, the paper's setting), or every row of a paired batch
(``rows: all``). Rows are selected by zeroing the others rather than by indexing (no host read): zero rows add
only zero singular values, so the ``k`` smallest of the selected rows' matrix sit at positions ``r-k .. r-1`` of
the descending spectrum, ``r = min(selected rows, feature_dim)``. Under several processes the trainer hands it the
global batch, so the spectrum is that of all processes' rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import RecipeError
from ._layers import check_choice, check_positive, check_trade_off, full_precision
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method

ROWS = ("source", "all")


@dataclass
class BSSConfig(MethodConfig):
    """Fields of ``bss``: how many singular values shrink, and over which rows."""

    trade_off: float = field(
        default=0.001, metadata={"help": "eta: weight of the shrinkage term (0.001 in Chen et al. 2019 and TLlib)."}
    )
    k: int = field(default=1, metadata={"help": "Number of smallest singular values whose squares are penalised."})
    rows: Literal["source", "all"] = field(
        default="source",
        metadata={"help": "Feature rows of the batch: 'source' (the labelled rows, as in the paper) or 'all' (source "
                          "and target rows of a paired batch)."},
    )

    def __post_init__(self):
        check_trade_off("bss", self.trade_off)
        check_positive("bss.k", self.k)
        if int(self.k) != self.k:
            raise RecipeError(f"bss.k: must be a whole number, got {self.k!r}")
        check_choice("bss.rows", self.rows, ROWS)


def spectral_shrinkage(features: torch.Tensor, k: int = 1, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of the ``k`` smallest squared singular values of ``features (B, D)``, or of its rows where the 0/1
    ``row_weight (B,)`` is 1. With fewer than ``k`` such rows (or dimensions), the sum is over all of them."""
    rows, dim = features.shape
    if row_weight is None:
        selected = torch.full((), rows, device=features.device)
    else:
        features = features * row_weight.to(features.dtype).unsqueeze(1)
        selected = row_weight.sum()
    sigma = torch.linalg.svdvals(features)  # descending, min(B, D) values
    rank_bound = selected.clamp_max(min(rows, dim)).long()
    position = rank_bound - 1 - torch.arange(k, device=features.device)
    valid = (position >= 0).to(sigma.dtype)
    return (sigma.gather(0, position.clamp(0, sigma.shape[0] - 1)).pow(2) * valid).sum()


class BSS(TransferMethod):
    """Batch spectral shrinkage on ``batch.features`` (the trainer logs the penalty as ``bss/loss``)."""

    def forward(self, batch: StepBatch) -> MethodOutput:
        c: BSSConfig = self.config
        with full_precision(batch.features):  # no SVD in half precision
            weight = (batch.domain == 0).float() if c.rows == "source" else None
            loss = spectral_shrinkage(batch.features.float(), int(c.k), weight)
        return MethodOutput(loss)


register_method("bss", BSSConfig, BSS)
