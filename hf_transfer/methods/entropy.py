"""``method: entropy`` — entropy minimisation on the target rows (Grandvalet & Bengio 2004, "Semi-supervised
Learning by Entropy Minimization", NeurIPS; used for domain adaptation by Long et al. 2016, RTN, and as the "+E" of
many methods).

The loss is the mean Shannon entropy (nats) of ``softmax(logits)`` over target rows: it pushes decision boundaries
away from dense target regions. Alone it can collapse every target row onto one class; combine it with an alignment
method (``method: [dann, entropy]``) and keep ``trade_off`` small (0.01-0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._layers import check_trade_off, side_weights
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method


@dataclass
class EntropyConfig(MethodConfig):
    """``entropy`` has only ``trade_off``."""

    def __post_init__(self):
        check_trade_off("entropy", self.trade_off)


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C) -> (B,)`` entropy of ``softmax(logits)`` in nats, computed from log-probabilities (no log(0))."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


class Entropy(TransferMethod):
    """Mean prediction entropy on target rows (the trainer logs it as ``entropy/loss``)."""

    needs_target = True

    def forward(self, batch: StepBatch) -> MethodOutput:
        _, target = side_weights(batch.domain)
        # Weighted, not selected (no wait on the device); 0 on a batch without target rows.
        loss = (prediction_entropy(batch.logits.float()) * target).sum() / target.sum().clamp_min(1)
        return MethodOutput(loss, {})


register_method("entropy", EntropyConfig, Entropy)
