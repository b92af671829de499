"""F1 of a classifier (an ``evaluate`` metric, shipped for offline use).

Loaded by ``hf_transfer.metrics.load_metric("f1")`` or ``evaluate.load("<this folder>")``. Unlike the Hub's
``f1`` metric (which defaults to ``average="binary"``), the default average is ``"macro"``, which serves
any number of classes.
"""

from hf_transfer.metrics import module_base as base  # the module, not its classes: see module_base


class F1(base.AveragedClassMetric):
    shipped_name = "f1"
    shipped_description = ("F1: the harmonic mean of precision and recall, 2 * TP / (2 * TP + FP + FN), per class "
                           "then averaged.")
    shipped_inputs = base.averaged_inputs("f1")
