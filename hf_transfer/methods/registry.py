"""Name -> method registry, in the manner of PEFT's tuner mapping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import MethodConfig, TransferMethod

#: ``prepare(config, context) -> context``: runs once before training, after the model is loaded. ``context`` holds
#: ``data`` (PreparedData, source rows not yet paired with target rows), ``model``, ``tokenizer``, ``collator`` (a
#: hook may replace it; training uses the one left there), ``args`` (TrainingArguments), ``metrics`` (a dict that
#: ends up in metrics.json), ``methods`` (the built ``{name: TransferMethod}``), ``feature_module`` (whose input
#: is ``StepBatch.features``; ``None`` when no method has a loss) and, in the flat transfer family, ``callbacks`` (the
#: run's ``TrainerCallback`` list: a hook may append one, e.g. to act at ``on_train_end`` as ``adabn`` does).
PrepareHook = Callable[[MethodConfig, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_class: type[MethodConfig]
    method_class: type[TransferMethod] | None  # None: the method adds no loss (plain supervised training)
    needs_target: bool
    prepare: PrepareHook | None = None


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_class: type[MethodConfig],
    method_class: type[TransferMethod] | None = None,
    *,
    prepare: PrepareHook | None = None,
) -> None:
    """Make a method available to recipes as ``method: <name>``.

    Args:
        name: the recipe name, lower case (``"dann"``).
        config_class: dataclass of the method's fields; a recipe block ``<name>: {...}`` fills it.
        method_class: the loss module, or ``None`` for a method that only trains on the supervised task loss.
        prepare: an optional hook run once before training to change the training data (e.g. add instance
            weights); see :data:`PrepareHook`.
    """
    if name in _METHODS:
        raise ValueError(f"a method named {name!r} is already registered")
    if method_class is not None:
        method_class.name = name
        method_class.config_class = config_class
    needs_target = bool(method_class is not None and method_class.needs_target)
    _METHODS[name] = MethodSpec(name, config_class, method_class, needs_target, prepare)


def get_method_spec(name: str) -> MethodSpec:
    try:
        return _METHODS[name]
    except KeyError:
        from ..errors import unknown_choice

        raise unknown_choice("method", name, list(_METHODS)) from None


def available_methods() -> list[str]:
    return sorted(_METHODS)
