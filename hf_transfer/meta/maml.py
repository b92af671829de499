"""Optimisation-based meta-learning: first-order MAML (Finn et al., ICML 2017) and Reptile (Nichol et al., 2018).

Both run an inner loop of plain SGD on an episode's support loss, starting from the meta-parameters ``theta``:
``phi_0 = theta``, ``phi_{s+1} = phi_s - inner_lr * grad L_support(phi_s)``, ``s < inner_steps``. Then

* first-order MAML takes the query loss's gradient at the adapted point, ``g = grad L_query(phi_k)``, as the
  meta-gradient of ``theta`` (second-order terms dropped, so nothing is kept for backpropagation through the loop);
* Reptile takes ``g = theta - phi_k``: with an outer SGD step of size ``eps`` this is ``theta <- theta + eps * (phi_k
  - theta)``, Reptile's update; with Adam it is the paper's "Reptile with Adam" variant.

The meta-gradient is written into ``param.grad`` so that any outer optimiser (and the
:class:`~hf_transfer.meta.episodic_trainer.EpisodicTrainer`, which all-reduces it across processes) takes the step.
Which parameters adapt is the caller's choice: every trainable parameter of the encoder, only its LoRA parameters (a
PEFT model: the base stays frozen, so memory stays flat), or only an episode head (``inner_params: head``,
ANIL-style).

An episode's labels are a fresh permutation of its classes, so the classifier cannot be meta-learned as fixed
weights; each episode gets a linear head initialised from the support prototypes (``W_j = 2 c_j``,
``b_j = -||c_j||^2``, the linear form of the squared-Euclidean prototype classifier: Proto-MAML, Triantafillou et al.,
ICLR 2020) or from zero, and the head adapts in the inner loop together with the chosen parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .protonet import prototypes

HEAD_INITS = ("prototypes", "zero")
INNER_PARAMS = ("all", "head")


def sgd_steps(params: Sequence[torch.Tensor], loss_fn: Callable[[], torch.Tensor], *, steps: int,
              lr: float) -> list[float]:
    """``steps`` plain SGD steps on ``params`` in place (first-order: no graph is kept); returns the losses."""
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.sub_(lr * g)
        losses.append(float(loss.detach()))
    return losses


@contextmanager
def restored(params: Sequence[torch.Tensor]):
    """Run a block that changes ``params`` in place, then put their values back."""
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def fomaml_gradients(params: Sequence[torch.Tensor], support_loss: Callable[[], torch.Tensor],
                     query_loss: Callable[[], torch.Tensor], *, steps: int, lr: float,
                     inner_extra: Sequence[torch.Tensor] = ()) -> tuple[list[torch.Tensor | None], float]:
    """First-order MAML: ``grad L_query(phi_k)`` for ``params``, ``params`` left at ``theta``.

    ``inner_extra`` are tensors that adapt in the inner loop but get no meta-gradient (an episode head).
    """
    with restored(params):
        sgd_steps([*params, *inner_extra], support_loss, steps=steps, lr=lr)
        loss = query_loss()
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return list(grads), float(loss.detach())


def reptile_gradients(params: Sequence[torch.Tensor], support_loss: Callable[[], torch.Tensor], *, steps: int,
                      lr: float, inner_extra: Sequence[torch.Tensor] = ()) -> tuple[list[torch.Tensor], float]:
    """Reptile: ``theta - phi_k`` for ``params``, ``params`` left at ``theta``; also the last support loss."""
    with restored(params) as theta:
        losses = sgd_steps([*params, *inner_extra], support_loss, steps=steps, lr=lr)
        deltas = [t - p.detach() for t, p in zip(theta, params)]
    return deltas, losses[-1] if losses else float("nan")


def set_gradients(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    """Write a meta-gradient into ``.grad`` (a missing one, for a parameter the loss does not reach, is zero)."""
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g.detach().to(p.dtype)


def episode_head(support: torch.Tensor, support_labels: torch.Tensor, n_way: int,
                 init: str = "prototypes") -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh linear head ``(W (N, d), b (N,))`` for an episode, as leaf tensors that require grad."""
    support = support.detach().float()
    if init == "prototypes":
        protos = prototypes(support, support_labels, n_way)
        weight, bias = 2 * protos, -(protos**2).sum(-1)
    elif init == "zero":
        weight = support.new_zeros(n_way, support.shape[-1])
        bias = support.new_zeros(n_way)
    else:
        raise ValueError(f"head_init: unknown {init!r}; choose one of {', '.join(HEAD_INITS)}")
    return weight.requires_grad_(True), bias.requires_grad_(True)


def head_logits(embeddings: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    weight, bias = head
    return embeddings.float() @ weight.T + bias


def head_loss(embeddings: torch.Tensor, labels: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(head_logits(embeddings, head), labels.long())
