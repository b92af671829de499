"""Multi-label text classification: any number of classes per text (topics, aspects, emotions, toxicity types).

Data convention (the Hub's, e.g. ``go_emotions`` and its ``labels`` column): ``label_column`` holds a *list* per row,
of class ids (``[0, 3]``) or of class names (``["price", "shipping"]``); an empty list is a row with no class. The
classes are the names that occur in the source (sorted), the ids ``0..max`` (or ``num_labels``), or ``class_names``.
Each row's labels become a multi-hot float vector.

The model is ``AutoModelForSequenceClassification`` with ``problem_type="multi_label_classification"``: transformers
then computes the binary cross-entropy of each class from the logits (``BCEWithLogitsLoss``), and a
``pipeline("text-classification", top_k=None)`` gives every class its sigmoid score. Training computes that same loss
on the labelled source rows (instance weights and target rows as for single-label tasks; see
:func:`multi_label_bce`), so feature-alignment methods (dann, mmd, coral, bss, lwf, l2sp, instance_weighting, mlm)
work unchanged. Methods that read single-label class probabilities (a softmax of the logits) or class ids are
refused (:data:`REFUSED_METHODS`).

Metrics use a threshold of 0.5 on the sigmoid (logit > 0): ``accuracy`` is the subset accuracy (every class of the
row right, scikit-learn's ``accuracy_score`` on indicator matrices), ``micro_f1``, ``macro_f1``, ``weighted_f1`` (and
the same for precision and recall) are scikit-learn's multi-label averages (a class with no predicted and no true
row scores 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError, RecipeError
from .base import Task
from .registry import register_task

IGNORE_INDEX = -100

#: methods that need single-label class probabilities or class ids, and why
REFUSED_METHODS = {
    "cdan": "conditions its discriminator on single-label class probabilities (a softmax of the logits)",
    "mcc": "scores the class confusion of single-label class probabilities (a softmax of the logits)",
    "entropy": "minimises the entropy of single-label class probabilities (a softmax of the logits)",
    "graph_laplacian": "reads one class id per labelled row",
    "label_relation": "initialises the head from a single-label source classifier",
}

#: selection validators all score single-label probabilities (a softmax), or a per-row class id
_VALIDATORS_NOTE = "iwv, dev, snd and entropy score single-label (softmax) class probabilities"

_SCORES = ("f1", "precision", "recall")
_AVERAGES = ("micro", "macro", "weighted")
SUPPORTED_METRICS = ("accuracy", *(f"{a}_{s}" for a in _AVERAGES for s in _SCORES))


def multi_label_bce(logits, targets, row_weight, *, global_batch: bool = False):
    """Mean binary cross-entropy (with logits) over the classes of each labelled row, averaged over rows with
    ``row_weight`` (0 for target and unlabelled rows): with every weight 1 this is transformers'
    ``BCEWithLogitsLoss()`` of a ``multi_label_classification`` model. ``global_batch``: this process's share of the
    mean over every process's rows (see :func:`hf_transfer.losses.weighted_cross_entropy`)."""
    import torch.nn.functional as F

    from ..distributed import global_mean_scale

    targets = targets.float().clamp(0, 1)  # target rows hold -100 (and weigh 0)
    per_row = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(-1)
    weights = row_weight.to(per_row.dtype)
    total = (per_row * weights).sum()
    if global_batch:
        return total * global_mean_scale(weights.sum())
    return total / weights.sum().clamp_min(1e-12)


class MultiLabelMetrics:
    """The Trainer's ``compute_metrics`` (and the evaluate command's scorer) for multi-label logits ``(N, C)`` and
    multi-hot labels ``(N, C)``; rows whose labels are -100 are skipped."""

    def __init__(self, names: list[str]):
        self.names = list(names)

    @staticmethod
    def _rows(predictions: Any, label_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        logits, labels = np.asarray(predictions, dtype=np.float64), np.asarray(label_ids)
        if logits.shape != labels.shape or logits.ndim != 2:
            raise ValueError(f"multi-label predictions {logits.shape} and labels {labels.shape} must both be (N, C)")
        keep = ~(labels == IGNORE_INDEX).all(axis=1)
        # sigmoid(x) > 0.5 exactly when x > 0
        return logits[keep] > 0, labels[keep] > 0.5

    @staticmethod
    def _counts(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row ``(n, C)`` true positives, false positives, false negatives, and per-row exact matches."""
        return {"tp": pred & true, "fp": pred & ~true, "fn": ~pred & true, "exact": (pred == true).all(axis=1)}

    def _scores(self, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, exact: np.ndarray) -> dict[str, np.ndarray]:
        """Scores from counts summed over rows: ``tp/fp/fn`` ``(..., C)``, ``exact`` ``(...)`` (a mean)."""
        def ratio(num, den):
            return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)

        support = tp + fn
        out: dict[str, np.ndarray] = {}
        for name in self.names:
            if name == "accuracy":
                out[name] = exact
                continue
            average, score = name.split("_", 1)
            if average == "micro":
                tp_, fp_, fn_ = tp.sum(-1), fp.sum(-1), fn.sum(-1)
            else:
                tp_, fp_, fn_ = tp, fp, fn
            precision, recall = ratio(tp_, tp_ + fp_), ratio(tp_, tp_ + fn_)
            value = {"precision": precision, "recall": recall,
                     "f1": ratio(2 * tp_, 2 * tp_ + fp_ + fn_)}[score]
            if average == "macro":
                value = value.mean(-1)
            elif average == "weighted":
                value = ratio((value * support).sum(-1), support.sum(-1))
            out[name] = value
        return out

    def compute(self, predictions: Any, label_ids: Any) -> dict[str, float]:
        pred, true = self._rows(predictions, label_ids)
        if not len(true):
            return {name: float("nan") for name in self.names}
        c = self._counts(pred, true)
        scores = self._scores(c["tp"].sum(0), c["fp"].sum(0), c["fn"].sum(0), c["exact"].mean())
        return {k: float(v) for k, v in scores.items()}

    def __call__(self, eval_pred) -> dict[str, float]:
        return self.compute(eval_pred.predictions, eval_pred.label_ids)

    def intervals(self, predictions: Any, label_ids: Any, *, num_resamples: int, confidence: float,
                  seed: int = 0) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals over rows (:mod:`hf_transfer.metrics.bootstrap`)."""
        from ..metrics import bootstrap_intervals

        pred, true = self._rows(predictions, label_ids)
        c = self._counts(pred, true)

        def score(indices: np.ndarray) -> dict[str, np.ndarray]:
            return self._scores(c["tp"][indices].sum(1), c["fp"][indices].sum(1), c["fn"][indices].sum(1),
                                c["exact"][indices].mean(1))

        return bootstrap_intervals(len(true), score, num_resamples=num_resamples, confidence=confidence, seed=seed)


class MultiLabelCollator:
    """The text collator, with ``labels`` as a ``(rows, C)`` float multi-hot matrix (target rows all -100)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.base([{k: v for k, v in r.items() if k != "labels"} for r in rows])
        if rows and "labels" in rows[0]:
            source = torch.tensor([r["labels"] for r in rows], dtype=torch.float32)
            target_rows = int((batch["domain"] == 1).sum()) if "domain" in batch else 0
            filler = torch.full((target_rows, source.shape[1]), float(IGNORE_INDEX))
            batch["labels"] = torch.cat([source, filler])
        return batch


class MultiLabelClassification(Task):
    """Multi-label classification of a text (or text pair): ``label_column`` holds a list of classes per row."""

    name = "multi-label-classification"
    pipeline_tag = "text-classification"
    auto_class_name = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    # Classes are read from the whole source table before training.
    supports_streaming = False
    config_fields = {"problem_type": "multi_label_classification"}
    card_kind = "A multi-label text"

    def check_recipe(self, *, data_args: Any, training_args: Any, methods: list[str],
                     method_configs: dict[str, Any] | None = None, selection_validators: list[str] | None = None
                     ) -> None:
        for name in methods:
            if name in REFUSED_METHODS:
                raise RecipeError(f"method: {name} is not available for task {self.name}: it "
                                  f"{REFUSED_METHODS[name]}; use dann, mmd, coral or another feature-alignment method")
            config = (method_configs or {}).get(name)
            if name == "mmd" and getattr(config, "joint", False):
                raise RecipeError(f"mmd.joint: the joint kernel reads softmax predictions; task {self.name} has none "
                                  "(set joint: false)")
        for metric in data_args.metrics:
            if metric not in SUPPORTED_METRICS:
                raise RecipeError(f"metrics: {metric!r} is not a multi-label metric; task {self.name} reports "
                                  f"{', '.join(SUPPORTED_METRICS)}")
        if data_args.target_data and selection_validators:
            raise RecipeError(f"selection_validators: {_VALIDATORS_NOTE}; task {self.name} has none: set "
                              "selection_validators: []")

    # ---- labels ----------------------------------------------------------------------------------------------

    def label_space(self, table: Any, d: Any, *, num_labels: int | None, field: str, spec: str):
        from ..data import LabelSpace

        lists = _label_lists(table[d.label_column], field=field, spec=spec)
        values = [v for row in lists for v in row]
        if any(isinstance(v, str) for v in values):
            if not all(isinstance(v, str) for v in values):
                raise DataError(f"label_column: {field} ({spec!r}) mixes class names and class ids; use one kind")
            names = list(d.class_names) if d.class_names else sorted(set(values))
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise DataError(f"label_column: {field} ({spec!r}) has labels {unknown[:5]} that are not in "
                                f"class_names {names}; fix the rows or add the names")
            if num_labels is not None and num_labels != len(names):
                raise DataError(f"num_labels: {num_labels} given but {field} ({spec!r}) has {len(names)} label names")
            return LabelSpace(names, from_strings=True)
        ids = _int_ids(values, field=field, spec=spec)
        count = num_labels or (len(d.class_names) if d.class_names else None) or max(2, int(max(ids, default=0)) + 1)
        bad = [i for i in ids if not 0 <= i < count]
        if bad:
            raise DataError(f"label_column: {field} ({spec!r}) has class id {bad[0]}, outside 0..{count - 1}; fix the "
                            "data or set num_labels")
        if len(set(ids)) < 2:
            raise DataError(f"label_column: {field} ({spec!r}) uses fewer than two classes; training needs two or "
                            "more")
        names = list(d.class_names) if d.class_names else [str(i) for i in range(count)]
        return LabelSpace(names)

    def encode_labels(self, table: Any, d: Any, space: Any, *, field: str, spec: str, column: str | None = None):
        column = column or d.label_column
        index = {name: i for i, name in enumerate(space.names)}
        rows = []
        for row, values in enumerate(_label_lists(table[column], field=field, spec=spec)):
            hot = [0.0] * space.num_labels
            for value in values:
                i = index.get(value) if isinstance(value, str) else _int_ids([value], field=field, spec=spec)[0]
                if i is None or not 0 <= i < space.num_labels:
                    raise DataError(f"label_column: {field} ({spec!r}) row {row} has label {value!r}, which is not "
                                    f"one of the model's classes {space.names}")
                hot[i] = 1.0
            rows.append(hot)
        if "labels" in table.column_names:
            table = table.remove_columns("labels")
        return table.add_column("labels", rows)

    def collator(self, processor: Any):
        return MultiLabelCollator(super().collator(processor))

    # ---- training --------------------------------------------------------------------------------------------

    def default_metrics(self) -> list[str]:
        return ["accuracy", "micro_f1", "macro_f1"]

    def compute_metrics(self, names: list[str], *, id2label: dict[int, str] | None = None):
        unsupported = [n for n in names if n not in SUPPORTED_METRICS]
        if unsupported:
            raise RecipeError(f"metrics: {unsupported[0]!r} is not a multi-label metric; task {self.name} reports "
                              f"{', '.join(SUPPORTED_METRICS)}")
        return MultiLabelMetrics(names)

    def labelled_rows(self, labels: Any) -> Any:
        # A row's multi-hot labels are all -100 when it has none (a target row).
        return ~(labels == IGNORE_INDEX).all(dim=1)

    def task_loss(self, logits: Any, labels: Any, labelled: Any, row_weight: Any, *, global_batch: bool) -> Any:
        return multi_label_bce(logits, labels, row_weight, global_batch=global_batch)

    # ---- export ----------------------------------------------------------------------------------------------

    def card_fields(self, *, peft_type: str | None, hub_model_id: str | None, merged: bool = False,
                    id2label: dict[int, str] | None = None) -> dict[str, Any]:
        fields = super().card_fields(peft_type=peft_type, hub_model_id=hub_model_id, merged=merged, id2label=id2label)
        fields["usage"] += ("\n\nEvery class gets its own sigmoid score: pass `top_k=None` to the pipeline to see all "
                            "of them, and keep the classes scoring above 0.5 (the threshold of the reported metrics).")
        return fields


def _label_lists(values: list[Any], *, field: str, spec: str) -> list[list[Any]]:
    for row, value in enumerate(values):
        if not isinstance(value, (list, tuple)):
            raise DataError(f"label_column: {field} ({spec!r}) row {row} has label {value!r}; task "
                            "multi-label-classification reads a list of classes per row (e.g. [0, 2] or "
                            "[\"price\", \"shipping\"]; [] for none)")
    return [list(v) for v in values]


def _int_ids(values: list[Any], *, field: str, spec: str) -> list[int]:
    out = []
    for value in values:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not (ok or (isinstance(value, float) and float(value).is_integer())):
            raise DataError(f"label_column: {field} ({spec!r}) has label {value!r}; labels must be class ids or "
                            "class-name strings")
        out.append(int(value))
    return out


register_task(MultiLabelClassification)
