"""``method: mcc`` — minimum class confusion (Jin et al. 2020, "Minimum Class Confusion for Versatile Domain
Adaptation", ECCV).

On the target rows: probabilities ``p = softmax(logits / T)``; rows are weighted by ``w = 1 + exp(-H(p))``
(normalised to mean 1, detached as in the reference code), the class-correlation matrix is ``C = p^T diag(w) p``,
each row of ``C`` is divided by its sum, and the loss is the mean over classes of the off-diagonal mass
(``(sum(C~) - trace(C~)) / num_labels``). It is 0 when no two classes are ever predicted for the same rows.
An add-on: use it alone or with an alignment method (``method: [cdan, mcc]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._layers import check_positive, check_trade_off, full_precision, side_weights
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .entropy import prediction_entropy
from .registry import register_method


@dataclass
class MCCConfig(MethodConfig):
    """Fields of ``mcc``."""

    temperature: float = field(
        default=2.5, metadata={"help": "Probability rescaling temperature T in softmax(logits / T) (paper: 2.5)."}
    )

    def __post_init__(self):
        check_trade_off("mcc", self.trade_off)
        check_positive("mcc.temperature", self.temperature)


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Minimum-class-confusion loss of ``(B, C)`` target logits (a scalar in ``[0, (C-1)/C]``).

    ``row_weight``: 0/1 weights that pick the target rows out of a mixed batch without selecting them (rows weighing
    0 play no part); the loss is 0 when no row weighs 1."""
    scaled = logits / temperature
    probs = scaled.softmax(-1)
    weight = (1.0 + torch.exp(-prediction_entropy(scaled))).detach()
    if row_weight is None:
        weight = weight / weight.mean()
    else:  # normalised to mean 1 over the rows that count
        row_weight = row_weight.to(weight.dtype)
        weight = weight * row_weight
        weight = weight * row_weight.sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)
    confusion = probs.T @ (probs * weight.unsqueeze(1))
    # The clamp only matters without rows (all sums 0): then the loss is 0 rather than 0/0.
    confusion = confusion / confusion.sum(1, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)
    return (confusion.sum() - confusion.trace()) / logits.shape[1]


class MCC(TransferMethod):
    """MCC on the target rows (the trainer logs it as ``mcc/loss``)."""

    needs_target = True

    def forward(self, batch: StepBatch) -> MethodOutput:
        _, target = side_weights(batch.domain)
        with full_precision(batch.logits):
            loss = mcc_loss(batch.logits.float(), self.config.temperature, row_weight=target)
        return MethodOutput(loss, {})


register_method("mcc", MCCConfig, MCC)
