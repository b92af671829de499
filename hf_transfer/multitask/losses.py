"""The training-time terms of multi-task learning: task-loss weighting, soft-sharing penalties, a task discriminator.

Each is a small function or module with a closed form, tested against a hand computation:

* :class:`UncertaintyWeighting`: Kendall, Gal & Cipolla (CVPR 2018), a learned log-variance per task;
* :func:`l2_tie_penalty`: soft parameter sharing (Duong et al., ACL 2015): per-task encoders pulled together;
* :func:`orthogonality_penalty`: the difference loss of shared-private models (Bousmalis et al. 2016; Liu, Qiu &
  Huang, ACL 2017, FDU-MTL): shared and private features of the same rows kept orthogonal;
* :class:`TaskDiscriminator`: the adversarial task classifier of ASP-MTL, behind a gradient-reversal layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..methods._layers import grad_reverse


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty task weighting (Kendall, Gal & Cipolla 2018).

    Each task ``t`` has a learned ``s_t = log sigma_t^2`` (``log_vars``, initialised to 0, i.e. weight 1). A task loss
    ``L_t`` becomes

    * classification (their eq. 10): ``exp(-s_t) * L_t + s_t / 2``   (``L / sigma^2 + log sigma``)
    * regression (their eq. 7):     ``exp(-s_t) * L_t / 2 + s_t / 2`` (``L / (2 sigma^2) + log sigma``)

    so a task whose loss stays high gets a larger ``sigma`` and a smaller weight, and ``log sigma`` keeps ``sigma``
    from growing without bound.
    """

    def __init__(self, num_tasks: int):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, loss: torch.Tensor, task: int, *, regression: bool = False) -> torch.Tensor:
        s = self.log_vars[task]
        scale = 0.5 if regression else 1.0
        return scale * torch.exp(-s) * loss + 0.5 * s

    def grow(self, num_tasks: int) -> None:
        """Add log-variances (at 0) for new tasks, keeping the learned ones."""
        old = self.log_vars.detach()
        if num_tasks > old.numel():
            new = torch.cat([old, old.new_zeros(num_tasks - old.numel())])
            self.log_vars = nn.Parameter(new, requires_grad=self.log_vars.requires_grad)


class _L2Tie(torch.autograd.Function):
    """``sum_t ||theta_t - mean||^2`` over ``T`` aligned parameter lists, in O(one parameter) extra memory.

    The gradient with respect to ``theta_t`` is ``2 (theta_t - mean)`` (the mean's own path cancels, since the
    deviations sum to zero), recomputed in backward instead of keeping ``T`` deviation copies alive.
    """

    @staticmethod
    def forward(ctx, num_models: int, *params: torch.Tensor) -> torch.Tensor:
        ctx.num_models = num_models
        ctx.save_for_backward(*params)
        per_model = len(params) // num_models
        total = params[0].new_zeros((), dtype=torch.float32)
        for i in range(per_model):
            group = params[i::per_model]
            mean = sum(p.float() for p in group) / num_models
            total = total + sum((p.float() - mean).pow(2).sum() for p in group)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        params = ctx.saved_tensors
        num_models = ctx.num_models
        per_model = len(params) // num_models
        grads: list[torch.Tensor | None] = [None] * len(params)
        for i in range(per_model):
            group = params[i::per_model]
            mean = sum(p.float() for p in group) / num_models
            for t, p in enumerate(group):
                grads[t * per_model + i] = (2.0 * grad_output * (p.float() - mean)).to(p.dtype)
        return (None, *grads)


def l2_tie_penalty(modules: Sequence[nn.Module]) -> torch.Tensor:
    """Soft parameter sharing: ``sum_t sum_k ||theta_t,k - mean_t(theta_t,k)||^2`` over the matching parameters
    ``k`` of ``T`` modules of one architecture (per-task encoders). Equals ``1/T * sum_{s<t} ||theta_s - theta_t||^2``,
    the pairwise form of Duong et al. (2015)."""
    if len(modules) < 2:
        param = next(iter(modules[0].parameters()))
        return param.new_zeros(())
    lists = [list(m.parameters()) for m in modules]
    if len({len(p) for p in lists}) != 1:
        raise ValueError("l2_tie_penalty: the modules do not have the same parameters")
    flat = [p for plist in lists for p in plist]
    return _L2Tie.apply(len(modules), *flat)


def orthogonality_penalty(shared: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """The difference loss ``||S^T P||_F^2``: ``S`` ``(N, d)`` shared and ``P`` ``(N, e)`` private features of the same
    ``N`` rows. Zero when every shared feature direction is uncorrelated (over the rows) with every private one."""
    if shared.shape[0] != private.shape[0]:
        raise ValueError(f"orthogonality_penalty: {shared.shape[0]} shared rows vs {private.shape[0]} private rows")
    return (shared.transpose(0, 1) @ private).pow(2).sum()


class TaskDiscriminator(nn.Module):
    """Predicts the task of a row from its shared feature, through gradient reversal (ASP-MTL's adversarial loss).

    Trained to tell the tasks apart; the reversed gradient trains the shared feature to make that impossible, so the
    shared part keeps what the tasks have in common. Shapes: ``(B, in_features) -> (B, num_tasks)``.
    """

    def __init__(self, in_features: int, num_tasks: int, *, hidden_size: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_tasks))

    @property
    def num_tasks(self) -> int:
        return self.net[-1].out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(grad_reverse(features, 1.0))

    def loss(self, features: torch.Tensor, task: int) -> torch.Tensor:
        logits = self(features)
        target = torch.full((features.shape[0],), task, dtype=torch.long, device=features.device)
        return F.cross_entropy(logits, target)
