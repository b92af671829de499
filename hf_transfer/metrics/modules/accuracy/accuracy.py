"""Accuracy: the fraction of predictions equal to their reference (an ``evaluate`` metric, shipped for offline use).

Loaded by ``hf_transfer.metrics.load_metric("accuracy")`` or ``evaluate.load("<this folder>")``.
"""

import datasets
import evaluate

from hf_transfer.metrics.functional import shipped_result

_DESCRIPTION = "Accuracy: correct predictions / all predictions, in [0, 1]."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
Returns:
    accuracy (`float`): in [0, 1]; NaN for no rows.
Examples:
    >>> metric = evaluate.load("hf_transfer/metrics/modules/accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return shipped_result("accuracy", predictions, references)
