"""Name -> class registry of the source-weighting estimators, for recipes (``instance_weighting.estimator``)."""

from __future__ import annotations

import difflib

from ._base import BaseWeighting
from .density_ratio import DensityRatioClassifier
from .kliep import KLIEP
from .kmm import KMM
from .neighbors import NearestNeighborSelection

WEIGHTINGS: dict[str, type[BaseWeighting]] = {
    "density_ratio": DensityRatioClassifier,
    "kliep": KLIEP,
    "kmm": KMM,
    "nearest_neighbors": NearestNeighborSelection,
}


def register_weighting(name: str, cls: type[BaseWeighting], *, overwrite: bool = False) -> None:
    """Make ``cls`` available to :func:`get_weighting` as ``name``.

    Parameters
    ----------
    name : str
        Registry key (what a recipe writes).
    cls : type
        A :class:`~hf_transfer.instance.BaseWeighting` subclass.
    overwrite : bool, default False
        Replace an existing entry instead of raising.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseWeighting)):
        raise TypeError(f"cls: expected a BaseWeighting subclass, got {cls!r}")
    if name in WEIGHTINGS and not overwrite:
        raise ValueError(f"name: {name!r} is already registered (to {WEIGHTINGS[name].__name__}); pass overwrite=True")
    WEIGHTINGS[name] = cls


def available_weightings() -> list[str]:
    """Registered estimator names, sorted."""
    return sorted(WEIGHTINGS)


def get_weighting(name: str, **kwargs) -> BaseWeighting:
    """Instantiate a registered weighting estimator by name.

    Parameters
    ----------
    name : str
        One of :func:`available_weightings` ("density_ratio", "kliep", "kmm", "nearest_neighbors").
    **kwargs
        Constructor arguments of that class (e.g. ``max_weight=10`` for "density_ratio").

    Returns
    -------
    BaseWeighting
        An unfitted estimator.

    Raises
    ------
    ValueError
        For an unknown name (naming the closest valid one) or an argument the class does not take.
    """
    if name not in WEIGHTINGS:
        hint = difflib.get_close_matches(str(name), WEIGHTINGS, n=1, cutoff=0.5)
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        raise ValueError(
            f"estimator: unknown weighting {name!r}; {did_you_mean}choose one of {', '.join(available_weightings())}"
        )
    cls = WEIGHTINGS[name]
    valid = cls._get_param_names()
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"{name}: unknown argument {key!r}{did_you_mean}; valid arguments: {', '.join(valid)}")
    return cls(**kwargs)
