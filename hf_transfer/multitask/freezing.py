"""Freezing plans in a multi-task model: ``freeze_backbone``, ``trainable_layers``, ``gradual_unfreezing_steps`` and
``layerwise_lr_decay``, applied by the flat path's own code (:func:`~hf_transfer.backbones.set_trainable_top_layers`,
:class:`~hf_transfer.trainer.GradualUnfreezing`, :func:`~hf_transfer.backbones.layerwise_lr_groups`).

That code finds a classifier's backbone by its ``base_model_prefix`` attribute; a
:class:`~hf_transfer.multitask.MultiTaskModel` keeps its encoder under ``encoder`` (``encoders.<task>`` with
``soft_l2``) but must keep its own prefix (``from_pretrained`` reads its keys). So the plans run on *views*: plain
modules, never saved or optimised, that hold the same encoder (and heads) under names those functions read.

* ``hard``: one view; the plan applies to the shared encoder.
* ``soft_l2``: one view per task encoder; the plan applies to each (the L2 tie still binds them).
* ``soft_lora`` / ``shared_private``: the base is frozen already and only adapters and heads train, so the three
  freezing plans are refused (:func:`check_freezing`); ``layerwise_lr_decay`` scales the adapters' learning rates
  by the depth of the layer they adapt.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..backbones import BackboneView
from ..errors import RecipeError

FREEZING_PLANS = ("freeze_backbone", "trainable_layers", "gradual_unfreezing_steps")


def model_view(model: nn.Module) -> nn.Module:
    """The whole model as a classifier whose backbone is its encoder(s): the parameter names are the model's own
    (``encoder.*`` or ``encoders.*``, ``heads.*`` ...), so a head parameter is anything outside the encoder."""
    prefix = "encoders" if model.config.sharing == "soft_l2" else "encoder"
    return BackboneView(prefix, dict(model.named_children()))


def encoder_views(model: nn.Module) -> list[nn.Module]:
    """One view per encoder (a single one unless ``soft_l2``), each with that encoder as its only child, named
    ``encoder``."""
    if model.config.sharing == "soft_l2":
        return [BackboneView("encoder", {"encoder": e}) for e in model.encoders.values()]
    return [BackboneView("encoder", {"encoder": model.encoder})]


def check_freezing(model_args: Any, *, sharing: str, from_multitask_model: str | None) -> None:
    """Refuse the freezing plans that conflict with the sharing mode or with adding tasks (one-line errors)."""
    plans = [p for p in FREEZING_PLANS if getattr(model_args, p) not in (None, False)]
    if not plans:
        return
    if sharing in ("soft_lora", "shared_private"):
        raise RecipeError(f"{plans[0]}: not used with sharing: {sharing}, whose base encoder is frozen already (only "
                          "the LoRA adapters and heads train); drop it, or use sharing: hard or soft_l2")
    if from_multitask_model:
        raise RecipeError(f"{plans[0]}: not used with from_multitask_model, which freezes the shared encoder already "
                          "(only the new tasks' parts train); drop it")


def apply_freezing(model: nn.Module, model_args: Any) -> None:
    """Apply ``freeze_backbone`` / ``trainable_layers`` to every encoder (on top of what
    :meth:`~hf_transfer.multitask.MultiTaskModel.set_trainable` chose)."""
    from ..backbones import set_trainable_top_layers

    views = encoder_views(model)
    if model_args.freeze_backbone:
        for view in views:
            set_trainable_top_layers(view, 0)
    elif model_args.trainable_layers is not None:
        for view in views:
            set_trainable_top_layers(view, model_args.trainable_layers)


def gradual_unfreezing_callbacks(model: nn.Module, every_steps: int | None) -> list:
    """One :class:`~hf_transfer.trainer.GradualUnfreezing` per encoder (none without ``gradual_unfreezing_steps``)."""
    if not every_steps:
        return []
    from ..trainer import GradualUnfreezing

    return [GradualUnfreezing(view, every_steps) for view in encoder_views(model)]


def layerwise_groups(model: nn.Module, *, learning_rate: float, decay: float, weight_decay: float,
                     no_decay: set[str]) -> list[dict[str, Any]]:
    """Optimizer groups for ``layerwise_lr_decay``: each encoder's parameters by depth
    (:func:`~hf_transfer.backbones.layerwise_lr_groups` on its view), everything else (heads, uncertainty weights,
    discriminator) at ``learning_rate``. ``no_decay``: the model's parameter names that get no weight decay."""
    from ..backbones import layerwise_lr_groups

    plain_no_decay = {id(p) for n, p in model.named_parameters() if n in no_decay}
    groups: list[dict[str, Any]] = []
    inside: set[int] = set()
    for view in encoder_views(model):
        names = {n for n, p in view.named_parameters() if id(p) in plain_no_decay}
        groups += layerwise_lr_groups(view, learning_rate=learning_rate, decay=decay, weight_decay=weight_decay,
                                      no_decay=names)
        inside |= {id(p) for p in view.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in inside]
    for decays in (True, False):
        params = [p for p in rest if (id(p) not in plain_no_decay) == decays]
        if params:
            groups.append({"params": params, "lr": learning_rate, "weight_decay": weight_decay if decays else 0.0})
    return groups
