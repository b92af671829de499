"""``method: coral`` — Deep CORAL (Sun & Saenko 2016, "Deep CORAL: Correlation Alignment for Deep Domain
Adaptation", ECCV Workshops).

Aligns second-order statistics: ``||C_s - C_t||_F^2 / (4 d^2)`` with ``C`` the unbiased (``1/(n-1)``) feature
covariance of each side of the batch and ``d`` the feature dimension. Needs at least two rows per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._layers import check_trade_off, full_precision, zero_loss
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method


@dataclass
class CORALConfig(MethodConfig):
    """``coral`` has only ``trade_off`` (the paper balances it so both losses are of similar size at the end)."""

    def __post_init__(self):
        check_trade_off("coral", self.trade_off)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """``(n, d) -> (d, d)`` unbiased covariance of the rows."""
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / (x.shape[0] - 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||Cov(source) - Cov(target)||_F^2 / (4 d^2)``."""
    d = source.shape[1]
    return ((covariance(source) - covariance(target)) ** 2).sum() / (4.0 * d * d)


class CORAL(TransferMethod):
    """Deep CORAL on ``batch.features``. No logs of its own: the trainer logs the loss as ``coral/loss``."""

    needs_target = True

    def forward(self, batch: StepBatch) -> MethodOutput:
        if int(batch.source_mask.sum()) < 2 or int(batch.target_mask.sum()) < 2:
            return MethodOutput(zero_loss(batch), {})
        with full_precision(batch.features):
            features = batch.features.float()
            loss = coral_loss(features[batch.source_mask], features[batch.target_mask])
        return MethodOutput(loss, {})


register_method("coral", CORALConfig, CORAL)
