"""``method: coral`` — Deep CORAL (Sun & Saenko 2016, "Deep CORAL: Correlation Alignment for Deep Domain
Adaptation", ECCV Workshops).

Aligns second-order statistics: ``||C_s - C_t||_F^2 / (4 d^2)`` with ``C`` the unbiased (``1/(n-1)``) feature
covariance of each side of the batch and ``d`` the feature dimension. Needs at least two rows per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._layers import at_least, check_trade_off, full_precision, side_weights
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method


@dataclass
class CORALConfig(MethodConfig):
    """``coral`` has only ``trade_off`` (the paper balances it so both losses are of similar size at the end)."""

    def __post_init__(self):
        check_trade_off("coral", self.trade_off)


def covariance(x: torch.Tensor, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``(n, d) -> (d, d)`` unbiased covariance of the rows, or of the rows with ``row_weight`` 1 when 0/1 weights
    are given (the others weigh 0: the covariance of a subset without selecting it, see ``side_weights``)."""
    if row_weight is None:
        row_weight = x.new_ones(x.shape[0])
    w = row_weight.to(x.dtype).unsqueeze(1)
    n = w.sum()
    centred = (x - (w * x).sum(0, keepdim=True) / n.clamp_min(1)) * w
    return centred.T @ centred / (n - 1).clamp_min(1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||Cov(source) - Cov(target)||_F^2 / (4 d^2)``."""
    return _covariance_gap(covariance(source), covariance(target))


def _covariance_gap(source_cov: torch.Tensor, target_cov: torch.Tensor) -> torch.Tensor:
    d = source_cov.shape[0]
    return ((source_cov - target_cov) ** 2).sum() / (4.0 * d * d)


class CORAL(TransferMethod):
    """Deep CORAL on ``batch.features``. No logs of its own: the trainer logs the loss as ``coral/loss``. A batch with
    fewer than 2 rows on a side gives an attached zero."""

    needs_target = True

    def forward(self, batch: StepBatch) -> MethodOutput:
        source, target = side_weights(batch.domain)
        with full_precision(batch.features):
            features = batch.features.float()
            loss = _covariance_gap(covariance(features, source), covariance(features, target))
        return MethodOutput(loss * at_least(source.sum(), 2) * at_least(target.sum(), 2), {})


register_method("coral", CORALConfig, CORAL)
