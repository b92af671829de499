"""``method: dann`` — domain-adversarial training (Ganin et al. 2016, "Domain-Adversarial Training of Neural
Networks", JMLR 17).

A discriminator learns to tell source rows from target rows by their features; between the features and the
discriminator sits a gradient-reversal layer, so the same loss that trains the discriminator pushes the feature
extractor towards features the discriminator cannot separate. The loss returned is the discriminator's
(domain-balanced) binary cross-entropy; the reversal coefficient ``lambda`` follows :func:`dann_lambda`.

With source ``sample_weight`` (instance weighting), the source rows' terms of the domain loss are weighted too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ._layers import (
    AdversarialDomainMethod,
    DomainDiscriminator,
    adversarial_domain_output,
    check_discriminator_fields,
    check_lambda_fields,
    check_trade_off,
)
from .base import MethodConfig, MethodOutput, StepBatch
from .registry import register_method


@dataclass
class DANNConfig(MethodConfig):
    """Fields of ``dann``: the discriminator's shape and the reversal schedule."""

    hidden_size: int = field(default=1024, metadata={"help": "Width of the discriminator's hidden layers."})
    num_layers: int = field(default=2, metadata={"help": "Number of hidden layers of the discriminator."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout after each hidden layer of the discriminator."})
    lambda_schedule: Literal["grl", "fixed"] = field(
        default="grl",
        metadata={
            "help": "Gradient-reversal coefficient over training: 'grl' rises as lambda_max*(2/(1+exp(-gamma*p))-1) "
            "with p the fraction of training done (Ganin et al. 2016); 'fixed' is lambda_max throughout."
        },
    )
    lambda_max: float = field(default=1.0, metadata={"help": "Final (or fixed) gradient-reversal coefficient."})
    gamma: float = field(default=10.0, metadata={"help": "Steepness of the 'grl' schedule."})

    def __post_init__(self):
        check_trade_off("dann", self.trade_off)
        check_discriminator_fields("dann", self.hidden_size, self.num_layers, self.dropout)
        check_lambda_fields("dann", self.lambda_schedule, self.lambda_max, self.gamma)


class DANN(AdversarialDomainMethod):
    """Gradient reversal + MLP domain discriminator on ``batch.features``.

    Logs ``lambda`` (current reversal coefficient), ``domain_loss`` and ``domain_accuracy`` (of the discriminator on
    this batch; 0.5 means the domains are indistinguishable to it).
    """

    def __init__(self, config: DANNConfig, *, feature_dim: int, num_labels: int):
        super().__init__(config, feature_dim=feature_dim, num_labels=num_labels)
        self.discriminator = DomainDiscriminator(
            feature_dim, hidden_size=config.hidden_size, num_layers=config.num_layers, dropout=config.dropout
        )

    def adversarial_step(self, batch: StepBatch, coeff: float, row_weight: torch.Tensor | None) -> MethodOutput:
        return adversarial_domain_output(self.discriminator, batch.features, batch, coeff, row_weight)


register_method("dann", DANNConfig, DANN)
