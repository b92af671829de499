"""Pieces shared by the domain-adaptation methods: gradient reversal, DANN's lambda schedule, an MLP domain
discriminator and multi-kernel Gaussian kernels.

Nothing here is registered as a method; ``dann``, ``cdan`` and ``mmd`` build on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import RecipeError
from .base import MethodOutput, StepBatch, TransferMethod

LAMBDA_SCHEDULES = ("grl", "fixed")


class GradientReverseFunction(torch.autograd.Function):
    """Identity on the way forward; multiplies the gradient by ``-coeff`` on the way back (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``-coeff`` in backward."""
    return GradientReverseFunction.apply(x, coeff)


class GradientReverseLayer(nn.Module):
    """Module form of :func:`grad_reverse`; ``coeff`` can be set per call (a scheduled lambda) or fixed at build."""

    def __init__(self, *, coeff: float = 1.0):
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor, coeff: float | None = None) -> torch.Tensor:
        return grad_reverse(x, self.coeff if coeff is None else coeff)


def dann_lambda(progress: float, *, schedule: str = "grl", lambda_max: float = 1.0, gamma: float = 10.0) -> float:
    """The gradient-reversal coefficient at a point of training.

    ``"grl"`` is the schedule of Ganin et al. (2016, JMLR, eq. 14): ``lambda_max * (2 / (1 + exp(-gamma * p)) - 1)``
    with ``p`` the fraction of training done; it starts at 0 so the discriminator's early, noisy signal does not
    disturb the features, and rises to ``lambda_max``. ``"fixed"`` is ``lambda_max`` throughout.
    """
    if schedule == "fixed":
        return float(lambda_max)
    if schedule != "grl":
        raise ValueError(f"unknown lambda schedule {schedule!r}; choose one of {', '.join(LAMBDA_SCHEDULES)}")
    p = min(max(float(progress), 0.0), 1.0)
    return float(lambda_max) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


class DomainDiscriminator(nn.Module):
    """MLP that tells source (0) from target (1) rows: ``num_layers`` blocks of Linear-ReLU-Dropout, then a linear
    layer to one logit.

    Shapes: ``(B, in_features) -> (B,)`` logits of "this row is from the target domain".
    """

    def __init__(self, in_features: int, *, hidden_size: int = 1024, num_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, d), (m, d) -> (n, m)`` squared Euclidean distances, clamped at 0 (the expansion can go slightly below)."""
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * x @ y.T
    return d.clamp_min(0.0)


def mean_pairwise_squared_distance(z: torch.Tensor) -> torch.Tensor:
    """Mean of ``||z_i - z_j||^2`` over ordered pairs ``i != j`` (the base bandwidth of DAN's kernels), detached.

    Computed in closed form, ``2 n/(n-1) * trace(Cov_biased(z))``, without the ``n x n`` matrix.
    """
    z = z.detach()
    n = z.shape[0]
    if n < 2:
        return z.new_tensor(1.0)
    centred = z - z.mean(0, keepdim=True)
    return 2.0 * (centred * centred).sum() / (n - 1)


def multi_gaussian_kernel(
    sq_dist: torch.Tensor, bandwidth: torch.Tensor | float, multipliers: Sequence[float]
) -> torch.Tensor:
    """Sum of Gaussian kernels ``sum_m exp(-d^2 / (m * bandwidth))`` applied elementwise to squared distances.

    This is the multi-kernel of DAN (Long et al. 2015) as its reference code computes it: equal weights, bandwidths
    spread geometrically around a base ``bandwidth`` (usually the mean pairwise squared distance).
    """
    out = torch.zeros_like(sq_dist)
    for m in multipliers:
        out = out + torch.exp(-sq_dist / (m * bandwidth))
    return out


def full_precision(tensor: torch.Tensor):
    """Context that turns autocast off on ``tensor``'s device: kernel distances and covariances are computed by
    expansions (``|x|^2 + |y|^2 - 2 x.y``) that lose everything to cancellation in bf16/fp16."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def side_weights(domain: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B,)`` 0/1 weights of the source rows (``domain`` 0) and of the target rows (``domain`` 1).

    Methods weight rows by these rather than select them (``features[batch.source_mask]``): a boolean-mask select
    has a data-dependent size, so it waits on the device every step (as does an ``if`` on a row count); a weighted
    sum over all rows does not."""
    return (domain == 0).to(dtype), (domain == 1).to(dtype)


def at_least(count: torch.Tensor, minimum: int) -> torch.Tensor:
    """``1.0`` where the device count ``count >= minimum``, else ``0.0``: multiply a loss by it instead of skipping
    the loss with an ``if`` (which reads the count on the host). The gated loss must be finite either way."""
    return (count >= minimum).to(count.dtype)


def zero_loss(batch: StepBatch, *modules: nn.Module) -> torch.Tensor:
    """A float32 zero that stays attached to the graph of the batch (and of the modules' parameters).

    Returned when a batch has too few rows on one side for a method's estimate: the step still backpropagates
    (every parameter gets a zero gradient, which keeps DistributedDataParallel's bookkeeping consistent).
    """
    loss = batch.features.float().sum() * 0.0 + batch.logits.float().sum() * 0.0
    for module in modules:
        for p in module.parameters():
            loss = loss + p.sum() * 0.0
    return loss


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise a :class:`RecipeError` naming the field when ``value`` is not > 0 (or >= 0)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise RecipeError(f"{name}: must be {bound}, got {value!r}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        from ..errors import unknown_choice

        raise unknown_choice(name, value, choices)


def check_trade_off(method: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise RecipeError(f"{method}.trade_off: must be a finite number >= 0, got {value!r}")


def check_lambda_fields(method: str, schedule: str, lambda_max: float, gamma: float) -> None:
    check_choice(f"{method}.lambda_schedule", schedule, LAMBDA_SCHEDULES)
    check_positive(f"{method}.lambda_max", lambda_max, allow_zero=True)
    check_positive(f"{method}.gamma", gamma)


def check_discriminator_fields(method: str, hidden_size: int, num_layers: int, dropout: float) -> None:
    check_positive(f"{method}.hidden_size", hidden_size)
    check_positive(f"{method}.num_layers", num_layers, allow_zero=True)
    if not 0.0 <= dropout < 1.0:
        raise RecipeError(f"{method}.dropout: must be in [0, 1), got {dropout!r}")


def domain_bce(
    logits: torch.Tensor, domain: torch.Tensor, row_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Domain-classification loss, balanced over the two domains.

    ``0.5 * (weighted mean BCE on source rows + weighted mean BCE on target rows)``, with per-row weights
    normalised within each domain (uniform when ``row_weight`` is None). Balancing keeps the loss comparable when
    the two sides of a batch have different sizes. Returns ``(loss, per_row_bce)``.
    """
    target = domain.to(logits.dtype)
    per_row = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = torch.ones_like(per_row) if row_weight is None else row_weight.to(per_row.dtype)
    loss = per_row.new_zeros(())
    for side in (0, 1):
        mask = (domain == side).to(per_row.dtype)
        w = weight * mask
        loss = loss + 0.5 * (w * per_row).sum() / w.sum().clamp_min(1e-12)
    return loss, per_row


def adversarial_domain_output(
    discriminator: nn.Module,
    inputs: torch.Tensor,
    batch: StepBatch,
    coeff: float,
    row_weight: torch.Tensor | None = None,
) -> MethodOutput:
    """The adversarial step DANN and CDAN share: reverse the gradient of ``inputs`` by ``coeff``, classify the
    domain with ``discriminator``, return the balanced domain loss and the logs (lambda, domain loss, accuracy)."""
    dtype = next(discriminator.parameters()).dtype
    logits = discriminator(grad_reverse(inputs.to(dtype), coeff)).float()
    loss, _ = domain_bce(logits, batch.domain, row_weight)
    with torch.no_grad():
        accuracy = ((logits > 0).long() == batch.domain.long()).float().mean()
    return MethodOutput(loss, {"lambda": coeff, "domain_loss": loss.detach(), "domain_accuracy": accuracy})


class AdversarialDomainMethod(TransferMethod):
    """What DANN and CDAN share: the scheduled reversal coefficient, the skip on a batch that holds one domain only,
    and the source rows' ``sample_weight`` carried into the domain loss. Subclasses build ``self.discriminator``
    and implement :meth:`adversarial_step`. Their configs carry the ``lambda_schedule``/``lambda_max``/``gamma``
    fields."""

    needs_target = True
    discriminator: nn.Module

    def current_lambda(self, progress: float) -> float:
        c = self.config
        return dann_lambda(progress, schedule=c.lambda_schedule, lambda_max=c.lambda_max, gamma=c.gamma)

    def forward(self, batch: StepBatch) -> MethodOutput:
        coeff = self.current_lambda(batch.progress)
        out = self.adversarial_step(batch, coeff, source_row_weight(batch))
        # A batch that holds one domain only trains nothing: the loss is gated on the device rather than skipped by
        # an `if` (which would wait on the device every step). Gated, it still touches every discriminator
        # parameter, so DDP sees them all used. domain_bce stays finite with an empty side, so 0 * loss is 0.
        both_domains = batch.source_mask.any() & batch.target_mask.any()
        return MethodOutput(out.loss * both_domains.to(out.loss.dtype), out.logs)

    def adversarial_step(self, batch: StepBatch, coeff: float, row_weight: torch.Tensor | None) -> MethodOutput:
        raise NotImplementedError


def source_row_weight(batch: StepBatch) -> torch.Tensor | None:
    """``sample_weight`` on source rows, 1 on target rows (None when the batch has no weights)."""
    if batch.sample_weight is None:
        return None
    weight = batch.sample_weight.detach().float()
    return torch.where(batch.source_mask, weight, torch.ones_like(weight))
