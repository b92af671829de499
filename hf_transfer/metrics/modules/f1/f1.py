"""F1 of a classifier (an ``evaluate`` metric, shipped for offline use).

Loaded by ``hf_transfer.metrics.load_metric("f1")`` or ``evaluate.load("<this folder>")``. Unlike the Hub's
``f1`` metric (which defaults to ``average="binary"``), the default average is ``"macro"``, which serves
any number of classes.
"""

import datasets
import evaluate

from hf_transfer.metrics.functional import shipped_result

_DESCRIPTION = "F1: the harmonic mean of precision and recall, 2 * TP / (2 * TP + FP + FN), per class then averaged."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    average (`str`): "macro" (default: unweighted mean over the classes present in references or predictions),
        "micro" (from pooled counts), "weighted" (weighted by each class's number of references) or "binary" (the
        class `pos_label` alone).
    pos_label (`int`): the positive class for average="binary" (default 1).
Returns:
    f1 (`float`): in [0, 1]; a class with a zero denominator scores 0 (scikit-learn's zero_division=0).
Examples:
    >>> metric = evaluate.load("hf_transfer/metrics/modules/f1")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], average="macro")
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro", pos_label=1):
        return shipped_result("f1", predictions, references, average=average, pos_label=pos_label)
