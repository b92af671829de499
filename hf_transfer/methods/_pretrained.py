"""What the methods that look at the model itself share: the model, and a frozen copy of what it was before training.

L2-SP pulls the weights towards their pretrained values, LwF the features towards those of the pretrained network,
mlm trains a head on the backbone's token states. Each gets the model in its ``prepare`` hook (see
:class:`~hf_transfer.methods.base.TransferMethod`). What they keep of it is held by :class:`Unregistered`, out of
the method's module tree, so it is never in the method stack's ``state_dict`` (checkpoints), ``parameters()``
(optimizer, DDP) or ``.to()``: the live model is the Trainer's to place, and a frozen copy is moved to the device of
the batch at its first use. On resume ``prepare`` runs before the Trainer loads the checkpoint, so the copy is
again the pretrained model, as in the first run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from ..errors import RecipeError

T = TypeVar("T")


class Unregistered(Generic[T]):
    """Holds an object (a module, a dict of tensors) on a method without making it a submodule or a buffer."""

    def __init__(self, value: T):
        self.value = value

    def __repr__(self) -> str:
        return f"Unregistered({type(self.value).__name__})"


#: Forward hooks are left out of a frozen copy: a hook another method put on the model (mlm keeps the backbone's
#: token states) is a bound method, which ``deepcopy`` would copy along with that method and everything it holds.
_FORWARD_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                       "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode (no dropout), with no parameter requiring a gradient and no forward hook."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for attribute in _FORWARD_HOOK_DICTS:
            hooks = getattr(module, attribute, None)
            if hooks:
                memo[id(hooks)] = type(hooks)()
    reference = copy.deepcopy(model, memo)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def snapshot(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Detached copies of ``(name, tensor)`` pairs: the anchor of a weight penalty."""
    return {name: tensor.detach().clone() for name, tensor in named}


def on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """Move ``module`` to ``device`` if its parameters are elsewhere (once: later calls find it there)."""
    first = next(module.parameters(), None)
    if first is not None and first.device != device:
        module.to(device)
    return module


def methods_of(context: dict[str, Any], cls: type, name: str) -> list:
    """The built methods of class ``cls`` in a ``prepare`` hook's ``context``."""
    methods = [m for m in context.get("methods", {}).values() if isinstance(m, cls)]
    if not methods:
        raise RuntimeError(f"{name}: the trainer did not pass its methods to the prepare hook")
    return methods


def refuse_sharded_engines(name: str, args: Any) -> None:
    """These methods read whole weights outside the model's forward, which FSDP and DeepSpeed shard or partition."""
    from ..distributed import launched_engine

    if launched_engine() or getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
        raise RecipeError(
            f"method: {name} reads the model's whole weights outside its forward pass, which FSDP and DeepSpeed "
            "shard; launch with DDP (recipes/accelerate/multi_cpu.yaml or ddp.yaml) or one process"
        )
