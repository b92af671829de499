"""A recipe's ``metrics``, loaded once, as the Trainer's ``compute_metrics`` and with bootstrap intervals.

:func:`build_compute_metrics` turns names (``[accuracy, macro_f1]``) into a :class:`MetricSuite`. Point values come
from the ``evaluate`` modules' ``compute``; the bootstrap scores all resamples at once with the same NumPy functions
those modules call (:mod:`hf_transfer.metrics.functional`), so ``B = 1000`` resamples cost about as much as a few
evaluations. A Hub metric has no vectorised form; its intervals call its ``compute`` once per resample.

Rows: a sequence classifier's rows are examples; a token classifier's predictions ``(N, L)`` are read per token
(positions labelled -100 are skipped) by classification metrics, and per sentence by entity metrics, whose bootstrap
resamples sentences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RecipeError
from .bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, bootstrap_intervals
from .functional import (
    classification_score,
    entity_scores,
    entity_types,
    resampled_confusion_matrices,
    sentence_counts,
)
from .registry import SHIPPED_METRICS, check_metric_names, load_module

IGNORE_INDEX = -100

Resampler = Callable[[np.ndarray], dict[str, np.ndarray]]


def predicted_ids(predictions: Any) -> np.ndarray:
    """Class ids from what the Trainer hands ``compute_metrics``: logits ``(..., C)`` (or a tuple whose first item
    they are) are reduced with argmax; ids pass through."""
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    array = np.asarray(predictions)
    return array.argmax(-1) if array.dtype.kind == "f" else array.astype(np.int64)


@dataclass
class ClassificationMetric:
    """A shipped accuracy / F1 / precision / recall, one class id per row; its result key is its name."""

    name: str
    module: Any
    score: str
    compute_kwargs: dict[str, Any]

    def rows(self, preds: np.ndarray, labels: np.ndarray, id2label: Mapping[int, str] | None):
        keep = labels != IGNORE_INDEX
        return preds[keep].astype(np.int64), labels[keep].astype(np.int64)

    def compute(self, preds: np.ndarray, refs: np.ndarray) -> dict[str, float]:
        if refs.size == 0:
            return {self.name: float("nan")}
        result = self.module.compute(predictions=preds, references=refs, **self.compute_kwargs)
        return {self.name: float(result[self.score])}

    def resampler(self, preds: np.ndarray, refs: np.ndarray) -> Resampler:
        return _shared_confusion([self], preds, refs)


@dataclass
class EntityMetric:
    """The shipped entity-level metric (seqeval semantics): rows are sentences of tags; keys are flattened
    (``overall_f1``, ``PER_f1`` ...)."""

    name: str
    module: Any

    def rows(self, preds: np.ndarray, labels: np.ndarray, id2label: Mapping[int, str] | None):
        if labels.ndim != 2:
            raise RecipeError(f"metrics: {self.name!r} scores token classification (a tag per token); this model "
                              "predicts one class per example, use accuracy / macro_f1")
        if not id2label:
            raise RecipeError(f"metrics: {self.name!r} needs the model's tag names (config.id2label)")
        pred_tags, ref_tags = [], []
        for pred_row, label_row in zip(preds, labels):
            keep = label_row != IGNORE_INDEX
            pred_tags.append([id2label[int(i)] for i in pred_row[keep]])
            ref_tags.append([id2label[int(i)] for i in label_row[keep]])
        return pred_tags, ref_tags

    def compute(self, preds: list[list[str]], refs: list[list[str]]) -> dict[str, float]:
        types = entity_types(preds, refs)
        entities, tokens = sentence_counts(preds, refs, types)
        if not refs:
            return {k: float(v) for k, v in entity_scores(entities.sum(0), tokens.sum(0), types).items()}
        result = self.module.compute(predictions=preds, references=refs)
        out: dict[str, float] = {}
        for key, value in result.items():
            if isinstance(value, Mapping):  # one entity type
                out.update({f"{key}_{stat}": float(v) for stat, v in value.items()})
            else:
                out[key] = float(value)
        return out

    def resampler(self, preds: list[list[str]], refs: list[list[str]]) -> Resampler:
        types = entity_types(preds, refs)
        entities, tokens = sentence_counts(preds, refs, types)

        def score(indices: np.ndarray) -> dict[str, np.ndarray]:
            scores = entity_scores(entities[indices].sum(axis=1), tokens[indices].sum(axis=1), types)
            return {k: v for k, v in scores.items() if not k.endswith("_number")}

        return score


@dataclass
class HubMetric:
    """A metric loaded from the Hub by name: called with class ids; every numeric value it returns is a result."""

    name: str
    module: Any

    rows = ClassificationMetric.rows

    def compute(self, preds: np.ndarray, refs: np.ndarray) -> dict[str, float]:
        result = self.module.compute(predictions=preds.tolist(), references=refs.tolist())
        return {k: float(v) for k, v in result.items() if isinstance(v, (int, float, np.number))}

    def resampler(self, preds: np.ndarray, refs: np.ndarray) -> Resampler:
        def score(indices: np.ndarray) -> dict[str, np.ndarray]:
            replicates = [self.compute(preds[i], refs[i]) for i in indices]
            return {k: np.array([r[k] for r in replicates]) for k in replicates[0]}

        return score


class MetricSuite:
    """The metrics of a recipe, loaded. Call it as a Trainer's ``compute_metrics``.

    Args:
        names: metric names (see :func:`hf_transfer.metrics.available_metrics`; other names load from the Hub).
        id2label: tag names of a token classifier, which entity metrics need.
    """

    def __init__(self, names: Sequence[str], *, id2label: Mapping[int, str] | None = None):
        self.names = check_metric_names(list(names))
        self.id2label = {int(k): v for k, v in id2label.items()} if id2label else None
        self.metrics = [self._load(name) for name in self.names]

    @staticmethod
    def _load(name: str):
        shipped = SHIPPED_METRICS.get(name)
        module = load_module(name)
        if shipped is None:
            return HubMetric(name, module)
        if shipped.kind == "entity":
            return EntityMetric(name, module)
        return ClassificationMetric(name, module, shipped.module, dict(shipped.compute_kwargs))

    def _rows(self, predictions: Any, label_ids: Any):
        preds, labels = predicted_ids(predictions), np.asarray(label_ids)
        if preds.shape != labels.shape:
            raise ValueError(f"predictions {preds.shape} and labels {labels.shape} do not match")
        return [metric.rows(preds, labels, self.id2label) for metric in self.metrics]

    def compute(self, predictions: Any, label_ids: Any) -> dict[str, float]:
        """Every metric on logits (or class ids) and labels; labels of -100 are skipped."""
        out: dict[str, float] = {}
        for metric, (preds, refs) in zip(self.metrics, self._rows(predictions, label_ids)):
            out.update(metric.compute(preds, refs))
        return out

    def __call__(self, eval_pred) -> dict[str, float]:
        """``compute_metrics`` for a ``transformers.Trainer``: takes an ``EvalPrediction``."""
        return self.compute(eval_pred.predictions, eval_pred.label_ids)

    def intervals(
        self,
        predictions: Any,
        label_ids: Any,
        *,
        num_resamples: int = DEFAULT_RESAMPLES,
        confidence: float = DEFAULT_CONFIDENCE,
        seed: int = 0,
    ) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap interval of every metric, ``{key: (low, high)}`` (see
        :mod:`hf_transfer.metrics.bootstrap`); the same seed gives the same resamples for every metric."""
        out: dict[str, tuple[float, float]] = {}
        rows = self._rows(predictions, label_ids)
        shipped = [(m, r) for m, r in zip(self.metrics, rows) if isinstance(m, ClassificationMetric)]
        others = [(m, r) for m, r in zip(self.metrics, rows) if not isinstance(m, ClassificationMetric)]
        groups: list[tuple[int, Resampler]] = []
        if shipped and len(shipped[0][1][1]):
            # The shipped classification metrics read the same rows: one confusion matrix per resample serves all.
            preds, refs = shipped[0][1]
            groups.append((len(refs), _shared_confusion([m for m, _ in shipped], preds, refs)))
        groups += [(len(refs), metric.resampler(preds, refs)) for metric, (preds, refs) in others if len(refs)]
        for num_rows, resampler in groups:
            out.update(bootstrap_intervals(num_rows, resampler, num_resamples=num_resamples, confidence=confidence,
                                           seed=seed))
        return out


def _shared_confusion(metrics: list[ClassificationMetric], preds: np.ndarray, refs: np.ndarray) -> Resampler:
    num_classes = int(max(preds.max(), refs.max())) + 1

    def score(indices: np.ndarray) -> dict[str, np.ndarray]:
        confusion = resampled_confusion_matrices(preds, refs, indices, num_classes=num_classes)
        return {m.name: classification_score(confusion, m.score, m.compute_kwargs.get("average", "macro"))
                for m in metrics}

    return score


def build_compute_metrics(names: Sequence[str], *, id2label: Mapping[int, str] | None = None) -> MetricSuite:
    """The Trainer's ``compute_metrics`` for a recipe's ``metrics`` (loaded now, so a bad name fails before any
    model loads)."""
    return MetricSuite(names, id2label=id2label)


def with_intervals(values: Mapping[str, float], intervals: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Each metric followed by ``<key>_ci_low`` and ``<key>_ci_high`` where it has an interval."""
    out: dict[str, float] = {}
    for key, value in values.items():
        out[key] = value
        if key in intervals:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = intervals[key]
    return out
