"""``method: cdan`` — conditional domain-adversarial training (Long et al. 2018, "Conditional Adversarial Domain
Adaptation", NeurIPS).

Like DANN, but the discriminator sees the multilinear map ``f ⊗ g`` of the features ``f (D)`` and the softmax
predictions ``g (C)`` (flattened to ``D*C``), so it aligns the joint distribution of features and classes rather
than the features alone. When ``D*C`` is large the randomized map ``(R_f f) ⊙ (R_g g) / sqrt(k)`` with fixed
Gaussian ``R_f (D, k)``, ``R_g (C, k)`` stands in for it (an unbiased estimate of the inner products of the full
map). As in the reference code, ``g`` is detached: the adversarial gradient reaches the model through ``f``.

CDAN+E (``entropy_conditioning``) weights each row's domain loss by ``1 + exp(-H(g))``, normalised within each
domain, so confidently-predicted rows count more. The weights are detached (as in the Transfer-Learning-Library
implementation; the original also passes a reversed gradient through ``H``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ._layers import (
    AdversarialDomainMethod,
    DomainDiscriminator,
    adversarial_domain_output,
    check_choice,
    check_discriminator_fields,
    check_lambda_fields,
    check_positive,
    check_trade_off,
    full_precision,
)
from .base import MethodConfig, MethodOutput, StepBatch
from .registry import register_method

MAPS = ("auto", "full", "randomized")


@dataclass
class CDANConfig(MethodConfig):
    """Fields of ``cdan``: those of ``dann`` plus the multilinear map and entropy conditioning."""

    hidden_size: int = field(default=1024, metadata={"help": "Width of the discriminator's hidden layers."})
    num_layers: int = field(default=2, metadata={"help": "Number of hidden layers of the discriminator."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout after each hidden layer of the discriminator."})
    lambda_schedule: Literal["grl", "fixed"] = field(
        default="grl",
        metadata={"help": "Gradient-reversal coefficient over training: 'grl' (rising, as in DANN) or 'fixed'."},
    )
    lambda_max: float = field(default=1.0, metadata={"help": "Final (or fixed) gradient-reversal coefficient."})
    gamma: float = field(default=10.0, metadata={"help": "Steepness of the 'grl' schedule."})
    entropy_conditioning: bool = field(
        default=True,
        metadata={"help": "CDAN+E: weight each row's domain loss by 1 + exp(-entropy of its prediction)."},
    )
    multilinear_map: Literal["auto", "full", "randomized"] = field(
        default="auto",
        metadata={
            "help": "'full': the discriminator sees features ⊗ softmax (D*C inputs); 'randomized': a fixed random "
            "projection of it to randomized_dim inputs; 'auto': full when D*C <= max_full_dim, else randomized."
        },
    )
    randomized_dim: int = field(default=1024, metadata={"help": "Output size of the randomized multilinear map."})
    max_full_dim: int = field(
        default=4096, metadata={"help": "With multilinear_map: auto, the largest D*C that uses the full map."}
    )
    random_seed: int = field(default=0, metadata={"help": "Seed of the randomized map's fixed projections."})

    def __post_init__(self):
        check_trade_off("cdan", self.trade_off)
        check_discriminator_fields("cdan", self.hidden_size, self.num_layers, self.dropout)
        check_lambda_fields("cdan", self.lambda_schedule, self.lambda_max, self.gamma)
        check_choice("cdan.multilinear_map", self.multilinear_map, MAPS)
        check_positive("cdan.randomized_dim", self.randomized_dim)
        check_positive("cdan.max_full_dim", self.max_full_dim)


class MultilinearMap(torch.nn.Module):
    """``(B, D), (B, C) -> (B, D*C)``: the flattened outer product ``f ⊗ g`` (row ``b``: ``f_b[i] * g_b[j]`` at
    ``i*C + j``)."""

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.bmm(f.unsqueeze(2), g.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(torch.nn.Module):
    """``(B, D), (B, C) -> (B, k)``: ``(f @ R_f) * (g @ R_g) / sqrt(k)`` with fixed standard-normal ``R_f, R_g``.

    The projections are buffers: saved in checkpoints so that a resumed run uses the same map.
    """

    def __init__(self, feature_dim: int, num_labels: int, *, output_dim: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.output_dim = output_dim
        self.register_buffer("r_features", torch.randn(feature_dim, output_dim, generator=gen))
        self.register_buffer("r_labels", torch.randn(num_labels, output_dim, generator=gen))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (f @ self.r_features.to(f.dtype)) * (g @ self.r_labels.to(g.dtype)) / self.output_dim**0.5


def entropy_weights(probs: torch.Tensor) -> torch.Tensor:
    """``1 + exp(-H(p))`` per row, with ``H`` the Shannon entropy in nats."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return 1.0 + torch.exp(-entropy)


class CDAN(AdversarialDomainMethod):
    """Conditional adversarial loss on ``batch.features`` and ``softmax(batch.logits)``.

    Logs ``lambda``, ``domain_loss`` and ``domain_accuracy`` as ``dann`` does.
    """

    def __init__(self, config: CDANConfig, *, feature_dim: int, num_labels: int):
        super().__init__(config, feature_dim=feature_dim, num_labels=num_labels)
        full_dim = feature_dim * num_labels
        use_full = config.multilinear_map == "full" or (
            config.multilinear_map == "auto" and full_dim <= config.max_full_dim
        )
        if use_full:
            self.map = MultilinearMap()
            in_features = full_dim
        else:
            self.map = RandomizedMultilinearMap(
                feature_dim, num_labels, output_dim=config.randomized_dim, seed=config.random_seed
            )
            in_features = config.randomized_dim
        self.discriminator = DomainDiscriminator(
            in_features, hidden_size=config.hidden_size, num_layers=config.num_layers, dropout=config.dropout
        )

    def adversarial_step(self, batch: StepBatch, coeff: float, row_weight: torch.Tensor | None) -> MethodOutput:
        dtype = next(self.discriminator.parameters()).dtype
        with full_precision(batch.features):
            probs = batch.logits.detach().float().softmax(-1)
            h = self.map(batch.features.float(), probs).to(dtype)
        weight = entropy_weights(probs) if self.config.entropy_conditioning else None
        if row_weight is not None:
            weight = row_weight if weight is None else weight * row_weight
        return adversarial_domain_output(self.discriminator, h, batch, coeff, weight)


register_method("cdan", CDANConfig, CDAN)
