"""``method: l2sp`` — fine-tuning pulled towards the pretrained weights (L2-SP: Li, Grandvalet & Davoine 2018,
"Explicit Inductive Bias for Transfer Learning with Convolutional Networks", ICML).

    loss = alpha / 2 * sum_{w shared} ||w - w0||^2  +  beta / 2 * sum_{w head} ||w||^2

``w0`` are the weights before training (the *starting point*, SP); *shared* parameters are those the model brought
with it, *head* parameters the new classification head (no pretrained value to return to, so plain L2 decay). Only
parameters that train count (a frozen one is at ``w0`` anyway). Under PEFT the adapter's factors are anchored at
their initial values (LoRA's ``B`` at zero), which pulls the adapter's update towards zero.

The anchor is a copy of the weights taken by the ``prepare`` hook, held out of the method's module tree (never in a
checkpoint, the optimizer or the export; rebuilt from the pretrained model on resume). Under several processes
every process holds the same weights, so the same penalty; DDP's average of its gradients is that gradient.

Set ``weight_decay: 0`` with it: AdamW's decoupled decay would pull the shared weights towards zero as well.
:class:`hf_transfer.lifelong.L2SP` uses the same penalty, anchored at the end of each task.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ._layers import check_positive, check_trade_off
from ._pretrained import Unregistered, methods_of, refuse_sharded_engines, snapshot
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method


@dataclass
class L2SPConfig(MethodConfig):
    """Fields of ``l2sp``: the pull towards the pretrained weights and the head's decay."""

    alpha: float = field(
        default=0.1, metadata={"help": "Weight of (1/2)||w - w0||^2 over the pretrained (shared) parameters."}
    )
    beta: float = field(default=0.01, metadata={"help": "Weight of (1/2)||w||^2 over the new head's parameters."})

    def __post_init__(self):
        check_trade_off("l2sp", self.trade_off)
        check_positive("l2sp.alpha", self.alpha, allow_zero=True)
        check_positive("l2sp.beta", self.beta, allow_zero=True)


def l2sp_penalty(
    parameters: Iterable[tuple[str, torch.Tensor]],
    anchor: Mapping[str, torch.Tensor],
    head: Container[str],
    *,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(penalty, sum ||w - w0||^2, sum ||w_head||^2)`` over named ``parameters`` (computed in float32).

    A name in ``anchor`` is pulled to its anchor with ``alpha``, a name in ``head`` towards zero with ``beta``;
    other names are left alone. The sums are 0 (attached to nothing) when no name matches.
    """
    shared = decay = None
    device = None
    for name, p in parameters:
        device = p.device
        if name in anchor:
            term = (p.float() - anchor[name].to(p.device, torch.float32)).pow(2).sum()
            shared = term if shared is None else shared + term
        elif name in head:
            term = p.float().pow(2).sum()
            decay = term if decay is None else decay + term
    zero = torch.zeros((), device=device)
    shared = zero if shared is None else shared
    decay = zero if decay is None else decay
    return 0.5 * alpha * shared + 0.5 * beta * decay, shared, decay


class L2SP(TransferMethod):
    """The L2-SP penalty of the model the ``prepare`` hook bound (:meth:`bind`).

    Logs ``distance`` (``||w - w0||`` over the trained shared parameters) and ``head_norm`` (``||w_head||``).
    """

    def __init__(self, config: L2SPConfig, *, feature_dim: int, num_labels: int):
        super().__init__(config, feature_dim=feature_dim, num_labels=num_labels)
        self._model: Unregistered | None = None
        self._anchor: Unregistered[dict[str, torch.Tensor]] | None = None
        self._head: frozenset[str] = frozenset()

    def bind(self, model: torch.nn.Module) -> None:
        """Anchor at ``model``'s current weights (call before training) and penalise its parameters from now on."""
        from ..backbones import head_parameter_names

        head = frozenset(head_parameter_names(model))
        self._model = Unregistered(model)
        self._head = head
        self._anchor = Unregistered(snapshot((n, p) for n, p in model.named_parameters() if n not in head))

    def forward(self, batch: StepBatch) -> MethodOutput:
        if self._model is None:
            raise RuntimeError("l2sp: no model bound; its prepare hook runs in hf_transfer.train")
        c: L2SPConfig = self.config
        anchor = self._anchor.value
        device = batch.features.device
        if any(t.device != device for t in anchor.values()):  # once: the anchor follows the model to its device
            self._anchor.value = anchor = {n: t.to(device) for n, t in anchor.items()}
        trained = ((n, p) for n, p in self._model.value.named_parameters() if p.requires_grad)
        loss, shared, decay = l2sp_penalty(trained, anchor, self._head, alpha=c.alpha, beta=c.beta)
        return MethodOutput(loss, {"distance": shared.detach().sqrt(), "head_norm": decay.detach().sqrt()})


def l2sp_prepare(config: L2SPConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: anchor every ``l2sp`` method at the model's weights before training."""
    refuse_sharded_engines("l2sp", context.get("args"))
    for method in methods_of(context, L2SP, "l2sp"):
        method.bind(context["model"])
    return context


register_method("l2sp", L2SPConfig, L2SP, prepare=l2sp_prepare)
