"""Accuracy: the fraction of predictions equal to their reference (an ``evaluate`` metric, shipped for offline use).

Loaded by ``hf_transfer.metrics.load_metric("accuracy")`` or ``evaluate.load("<this folder>")``.
"""

from hf_transfer.metrics import module_base as base  # the module, not its classes: see module_base


class Accuracy(base.ShippedMetric):
    shipped_name = "accuracy"
    shipped_description = "Accuracy: correct predictions / all predictions, in [0, 1]."
    shipped_inputs = """
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
