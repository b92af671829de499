"""Precision of a classifier (an ``evaluate`` metric, shipped for offline use).

Loaded by ``hf_transfer.metrics.load_metric("precision")`` or ``evaluate.load("<this folder>")``. Unlike the Hub's
``precision`` metric (which defaults to ``average="binary"``), the default average is ``"macro"``, which serves
any number of classes.
"""

from hf_transfer.metrics import module_base as base  # the module, not its classes: see module_base


class Precision(base.AveragedClassMetric):
    shipped_name = "precision"
    shipped_description = "Precision: TP / (TP + FP), per class then averaged."
    shipped_inputs = base.averaged_inputs("precision")
