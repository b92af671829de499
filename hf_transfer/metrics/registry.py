"""Metric names: the ones the project ships as local ``evaluate`` modules, and Hub metric names.

A recipe's ``metrics`` field lists names. A shipped name loads the project's own module from
``hf_transfer/metrics/modules/<module>/<module>.py`` with ``evaluate.load(<that folder>)``, which needs no network.
Any other name goes to ``evaluate.load(name)``: a local module (a folder holding ``<name>.py``, or the script) loads
offline; a Hub name (``matthews_correlation``, ``owner/metric``) is fetched from the Hub, and offline it is a one-line
:class:`~hf_transfer.errors.RecipeError` naming the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import RecipeError, nearest
from .functional import shipped_result

MODULES_DIR = Path(__file__).parent / "modules"
DEFAULT_CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
DEFAULT_TOKEN_CLASSIFICATION_METRICS = ("seqeval",)


@dataclass(frozen=True)
class ShippedMetric:
    """A metric name the project answers offline: the local module it loads, with the arguments it passes."""

    module: str  # folder under hf_transfer/metrics/modules/
    kind: str  # "classification" (one class id per row) or "entity" (a tag sequence per sentence)
    compute_kwargs: dict[str, Any] = field(default_factory=dict)


def _shipped() -> dict[str, ShippedMetric]:
    names = {"accuracy": ShippedMetric("accuracy", "classification"),
             "seqeval": ShippedMetric("seqeval", "entity")}
    for average in ("macro", "micro", "weighted", "binary"):
        for score in ("f1", "precision", "recall"):
            names[f"{average}_{score}"] = ShippedMetric(score, "classification", {"average": average})
    return names


#: recipe name -> shipped module. The name is also the metric's key in the results (``target_macro_f1``).
SHIPPED_METRICS: dict[str, ShippedMetric] = _shipped()
#: bare names read as their macro average (the Hub's modules default to "binary", which fails on 3+ classes)
ALIASES = {"f1": "macro_f1", "precision": "macro_precision", "recall": "macro_recall"}


def available_metrics() -> list[str]:
    """The metric names that work offline (shipped modules), aliases included."""
    return sorted([*SHIPPED_METRICS, *ALIASES])


def canonical_name(name: str) -> str:
    """``"f1"`` -> ``"macro_f1"``; other names unchanged."""
    return ALIASES.get(name, name)


def hub_offline() -> bool:
    """Whether the Hub is switched off (``HF_HUB_OFFLINE`` or the ``evaluate`` library's ``HF_EVALUATE_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))


def _unknown(name: str, why: str, field_name: str) -> RecipeError:
    hint = nearest(name, available_metrics())
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    return RecipeError(f"{field_name}: {name!r} {why}; {did_you_mean}metrics shipped for offline use: "
                       f"{', '.join(available_metrics())}")


def check_metric_names(names: list[str], *, field_name: str = "metrics") -> list[str]:
    """Validate names without loading anything; returns them canonical (aliases resolved, duplicates dropped).

    A name that is not shipped is refused here when the Hub is offline; online it is loaded (and checked) when the
    metrics are built, before any model loads.
    """
    if not names:
        raise RecipeError(f"{field_name}: name at least one metric, e.g. [accuracy, macro_f1]")
    out: list[str] = []
    for raw in names:
        if not isinstance(raw, str) or not raw.strip():
            raise RecipeError(f"{field_name}: expected metric names, got {raw!r}")
        name = canonical_name(raw.strip())
        if name not in SHIPPED_METRICS and not os.path.exists(name) and hub_offline():
            raise _unknown(name, "is not a shipped metric, and a Hub metric cannot be loaded offline (HF_HUB_OFFLINE "
                                 "is set)", field_name)
        if name not in out:
            out.append(name)
    return out


@dataclass(frozen=True)
class ShippedModule:
    """A shipped metric's ``compute``, called in this process without ``import evaluate``: that import costs about
    3 s per process (it imports ``transformers.pipelines``), which every training process, each of several
    launched ones, would pay for the same numbers. ``evaluate.load(<the module folder>)`` runs the same function
    (:func:`~hf_transfer.metrics.functional.shipped_result`); ``tests/test_metrics.py`` checks the two agree."""

    module: str

    def compute(self, *, predictions, references, **kwargs) -> dict[str, Any]:
        return shipped_result(self.module, predictions, references, **kwargs)


@cache
def load_module(name: str, *, field_name: str = "metrics"):
    """The ``evaluate.EvaluationModule`` for a metric name (cached: one load per process).

    A shipped name loads the local module; any other name is passed to ``evaluate.load`` (the Hub).
    """
    shipped = SHIPPED_METRICS.get(canonical_name(name))
    if shipped is not None:
        return ShippedModule(shipped.module)
    import evaluate

    if hub_offline() and not os.path.exists(name):  # a local module folder or script loads offline too
        raise _unknown(name, "is not a shipped metric, and a Hub metric cannot be loaded offline (HF_HUB_OFFLINE "
                             "is set)", field_name)
    try:
        return evaluate.load(name, keep_in_memory=True)
    except Exception as err:  # noqa: BLE001 - evaluate raises FileNotFoundError, ConnectionError, ImportError ...
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _unknown(name, f"could not be loaded from the Hub ({why})", field_name) from None
