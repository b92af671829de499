"""Penalties that keep a network close to what earlier tasks need: EWC and L2-SP.

* EWC (Kirkpatrick et al., PNAS 2017): ``(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2``, with ``F`` the diagonal
  of the Fisher information at the weights ``theta*`` left by the earlier tasks. Kept *online* (Schwarz et al., ICML
  2018): after each task ``F <- gamma * F + F_task`` and ``theta* <- theta``, so memory stays at two copies of the
  parameters however many tasks there are.
* L2-SP (Li, Grandvalet & Davoine, ICML 2018): ``(alpha / 2) ||w_S - w_S^0||^2 + (beta / 2) ||w_head||^2``: the
  pretrained weights ``w_S^0`` are the anchor of every parameter that has one (the encoder); new parameters (the
  head) get plain weight decay.

The Fisher diagonal is the empirical one, ``F_i = 1/n sum_x (d log p(y_x | x) / d theta_i)^2``, one example at a
time (a batch's mean gradient squared would underestimate it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.l2sp import l2sp_penalty


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    max_examples: int | None = None,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of ``model``'s trainable parameters over labelled ``batches`` (dicts with
    ``labels``; the model returns ``.logits``), one example at a time, at most ``max_examples``.

    ``sum_over_processes``: with several processes, each passes its own share of the examples and this function
    (e.g. ``lambda t: accelerator.reduce(t, "sum")``) adds up their squared-gradient sums and example counts, so
    every process returns the same Fisher: that of all the examples, as one process computes it."""
    params = trainable(model)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()  # the Fisher of the deterministic network (no dropout)
    try:
        for batch in batches:
            size = batch["labels"].shape[0]
            for row in range(size):
                if max_examples is not None and count >= max_examples:
                    break
                one = {k: v[row: row + 1] for k, v in batch.items()}
                labels = one.pop("labels")
                if "attention_mask" in one:  # drop this row's padding
                    keep = int(one["attention_mask"].sum())
                    one = {k: v[:, :keep] for k, v in one.items()}
                log_p = -F.cross_entropy(model(**one).logits.float(), labels.long())
                grads = torch.autograd.grad(log_p, list(params.values()), allow_unused=True)
                for (name, _), g in zip(params.items(), grads):
                    if g is not None:
                        fisher[name] += g.detach() ** 2
                count += 1
    finally:
        model.train(was_training)
    if sum_over_processes is not None:  # one collective for all parameters and the count
        names = list(fisher)
        parts = [fisher[n].float().reshape(-1) for n in names]
        flat = torch.cat([*parts, parts[0].new_tensor([count])])
        flat = sum_over_processes(flat)
        count = int(flat[-1].round())
        sizes = [fisher[n].numel() for n in names]
        fisher = {n: part.view_as(fisher[n]).to(fisher[n].dtype) for n, part in zip(names, flat[:-1].split(sizes))}
    if count == 0:
        raise ValueError("fisher_diagonal: no examples")
    return {n: f / count for n, f in fisher.items()}


class EWC:
    """Online elastic weight consolidation. Call :meth:`consolidate` after each task, add :meth:`penalty` to the
    loss while training the next ones."""

    def __init__(self, *, weight: float = 1.0, gamma: float = 1.0, max_examples: int | None = 200):
        self.weight, self.gamma, self.max_examples = weight, gamma, max_examples
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def consolidate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], *,
                    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Add the Fisher of ``batches`` at the current weights and make them the anchor (see
        :func:`fisher_diagonal` for ``sum_over_processes``)."""
        new = fisher_diagonal(model, batches, max_examples=self.max_examples, sum_over_processes=sum_over_processes)
        for name, f in new.items():
            self.fisher[name] = self.gamma * self.fisher[name] + f if name in self.fisher else f
        self.anchor = {n: p.detach().clone() for n, p in trainable(model).items()}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = None
        for name, p in trainable(model).items():
            if name in self.fisher:
                term = (self.fisher[name] * (p - self.anchor[name]) ** 2).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=next(model.parameters()).device)
        return 0.5 * self.weight * total


class L2SP:
    """L2-SP toward the weights ``model`` has now (call it on the pretrained model): encoder parameters are pulled
    to their starting point with ``alpha``, the others (``head`` names) toward zero with ``beta``."""

    def __init__(self, model: nn.Module, *, head: Iterable[str], alpha: float = 0.01, beta: float = 0.01):
        self.alpha, self.beta = alpha, beta
        self.head = set(head)
        self.anchor = {n: p.detach().clone() for n, p in trainable(model).items() if n not in self.head}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        # The penalty of the registered ``l2sp`` method, anchored here at the weights this object was built from.
        parameters = trainable(model).items()
        penalty, _, _ = l2sp_penalty(parameters, self.anchor, self.head, alpha=self.alpha, beta=self.beta)
        return penalty
