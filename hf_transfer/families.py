"""The family registry: which kind of training a recipe asks for, and the one result every family returns.

A *family* is a kind of training with its own recipe fields and loop: ``transfer`` (one source, an optional
unlabelled target, the transfer methods: the flat recipes), ``multitask`` (a ``tasks:`` list trained together),
``meta`` (``meta_method``: episodes over tasks) and ``lifelong`` (``lifelong_method``: tasks in sequence). Each
family package holds the same parts: a dataclass of its own recipe fields, a recipe loader, a train function, and
one :func:`register_family` line in its ``__init__.py``. The core (``load_recipe``, ``train``, the CLI, the launch
check) finds a family here and never by importing one by name.

A recipe's family is chosen by its keys: a family registers the key that selects it (``meta_method``,
``lifelong_method``, ``tasks``, ``train_data``) and a priority (meta and lifelong recipes also have ``tasks``, so
they are asked first). Recipes with none of those keys are ``transfer`` recipes, read by
:func:`hf_transfer.recipe.load_recipe` itself. The built-in family packages are imported on first lookup only, so a
flat recipe never pays for them.

This is a leaf module (standard library only): every layer may import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The family of recipes that select no other family.
DEFAULT_FAMILY = "transfer"

#: The packages of the built-in families other than ``transfer``; importing one runs its ``register_family`` line.
#: A family from another package registers itself when that package is imported.
BUILTIN_FAMILY_PACKAGES = (
    "hf_transfer.meta", "hf_transfer.lifelong", "hf_transfer.multitask", "hf_transfer.pretrain",
)
#: Where the default family registers itself (beside ``train``, which every run passes through first).
DEFAULT_FAMILY_MODULE = "hf_transfer.run"

#: ``load_recipe(raw, overrides) -> recipe``: ``raw`` the recipe mapping as read, ``overrides`` dotted overrides.
RecipeLoader = Callable[[dict[str, Any], dict[str, Any]], Any]
#: ``train(recipe, callbacks) -> TrainResult``: the family's whole run, from a parsed recipe to an exported folder.
TrainFunction = Callable[..., "TrainResult"]


@dataclass(frozen=True)
class FamilySpec:
    """One registered family."""

    name: str
    #: the recipe key that selects this family (``None``: the default family)
    selected_by: str | None
    load_recipe: RecipeLoader | None
    train: TrainFunction
    #: the dataclass of the family's own recipe fields (``MultiTaskArguments`` ...), ``None`` for the default family
    config_class: type | None = None
    #: one line for ``hf-transfer methods`` and error messages
    summary: str = ""
    #: higher is asked first (a meta recipe also has ``tasks``)
    priority: int = 0
    #: the documentation page of its recipe fields
    doc: str = "README.md"


_FAMILIES: dict[str, FamilySpec] = {}
_builtins_loaded = False


def register_family(spec: FamilySpec) -> None:
    """Make a family available to recipes (one line in the family package's ``__init__.py``)."""
    known = _FAMILIES.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"a family named {spec.name!r} is already registered")
    _FAMILIES[spec.name] = spec


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for package in BUILTIN_FAMILY_PACKAGES:
            importlib.import_module(package)


def get_family(name: str) -> FamilySpec:
    """The registered family ``name`` (``transfer``, ``multitask``, ``meta``, ``lifelong`` ...)."""
    if name == DEFAULT_FAMILY and name not in _FAMILIES:
        importlib.import_module(DEFAULT_FAMILY_MODULE)  # a registry lookup, not a layer above: nothing is used
    if name not in _FAMILIES:
        _load_builtins()
    try:
        return _FAMILIES[name]
    except KeyError:
        from .errors import unknown_choice

        raise unknown_choice("family", name, sorted(_FAMILIES)) from None


def available_families() -> list[str]:
    _load_builtins()
    return sorted({DEFAULT_FAMILY, *_FAMILIES})


def family_for_keys(keys: Iterable[str]) -> FamilySpec | None:
    """The family a recipe with these top-level keys belongs to (dotted override keys count by their first part),
    or ``None`` for a recipe of the default family."""
    present = {str(k).split(".", 1)[0] for k in keys}
    _load_builtins()
    for spec in sorted(_FAMILIES.values(), key=lambda s: -s.priority):
        if spec.selected_by is not None and spec.selected_by in present:
            return spec
    return None


def family_of(recipe: Any) -> str:
    """The family of a parsed recipe (its ``family`` attribute; flat recipes are ``transfer``)."""
    return getattr(recipe, "family", DEFAULT_FAMILY)


@dataclass
class TrainResult:
    """What ``hf_transfer.train`` returns for every family.

    ``metrics`` (as written to ``metrics.json``), the trained ``model``, its ``tokenizer`` (or image processor), the
    ``trainer`` that trained it (``None`` where a family ran several), the parsed ``recipe``, the ``output_dir``,
    and ``extras``: what a family adds (lifelong: ``matrix``, the accuracy matrix; meta: ``learner``). Extras also
    read as attributes (``result.matrix``).
    """

    metrics: dict[str, Any]
    model: Any
    tokenizer: Any
    trainer: Any
    recipe: Any
    output_dir: Path
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main_process(self) -> bool:
        """Whether this process wrote the output folder (the others of a launch return the same metrics)."""
        if "is_main_process" in self.extras:
            return bool(self.extras["is_main_process"])
        return self.trainer is None or bool(self.trainer.is_world_process_zero())

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras") or {}
        if name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
