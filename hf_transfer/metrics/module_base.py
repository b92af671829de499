"""The shared body of the project's shipped ``evaluate`` modules (``hf_transfer/metrics/modules/<name>/<name>.py``):
each module file names its metric, describes it and subclasses one class here.

A module file must import this module by name (``from hf_transfer.metrics import module_base as base``), not the
classes themselves: ``evaluate.load`` takes the first metric class it finds in the file's namespace as the file's
metric. Only those files import this module, so the training path, which computes the same results in process
(:func:`~hf_transfer.metrics.functional.shipped_result`), never imports ``evaluate``.
"""

import datasets
import evaluate

from .functional import shipped_result

#: one class id per row
CLASS_IDS = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
#: one sequence of tag names per sentence
TAG_SEQUENCES = datasets.Features({
    "predictions": datasets.Sequence(datasets.Value("string")),
    "references": datasets.Sequence(datasets.Value("string")),
})


class ShippedMetric(evaluate.Metric):
    """The ``evaluate`` face of one :func:`shipped_result` metric. Subclasses set the ``shipped_*`` attributes."""

    #: the name :func:`shipped_result` computes
    shipped_name = ""
    shipped_description = ""
    shipped_inputs = ""
    shipped_features = CLASS_IDS

    def _info(self):
        return evaluate.MetricInfo(
            description=self.shipped_description,
            citation="",
            inputs_description=self.shipped_inputs,
            features=self.shipped_features,
        )

    def _compute(self, predictions, references):
        return shipped_result(self.shipped_name, predictions, references)


class AveragedClassMetric(ShippedMetric):
    """A per-class score averaged over the classes (precision, recall, F1), ``average="macro"`` by default."""

    def _compute(self, predictions, references, average="macro", pos_label=1):
        return shipped_result(self.shipped_name, predictions, references, average=average, pos_label=pos_label)


def averaged_inputs(name: str) -> str:
    """The inputs description of the averaged class metric ``name``."""
    return f"""
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    average (`str`): "macro" (default: unweighted mean over the classes present in references or predictions),
        "micro" (from pooled counts), "weighted" (weighted by each class's number of references) or "binary" (the
        class `pos_label` alone).
    pos_label (`int`): the positive class for average="binary" (default 1).
Returns:
    {name} (`float`): in [0, 1]; a class with a zero denominator scores 0 (scikit-learn's zero_division=0).
Examples:
    >>> metric = evaluate.load("hf_transfer/metrics/modules/{name}")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], average="macro")
"""
