"""Entity-level precision, recall and F1 of a token tagger, with seqeval's semantics (an ``evaluate`` metric, shipped
for offline use).

Entities are read from IOB2, IOB1, IOE or IOBES tags as seqeval's default (lenient, conlleval) mode reads them; an
entity counts as correct when its type and its span both match. The output has the shape of the Hub's ``seqeval``
metric: a dict per entity type (``precision``, ``recall``, ``f1``, ``number`` of reference entities) and
``overall_precision`` / ``overall_recall`` / ``overall_f1`` (micro average over entities) and ``overall_accuracy``
(tag accuracy).
"""

import datasets
import evaluate

from hf_transfer.metrics.functional import shipped_result

_DESCRIPTION = "Entity-level precision, recall and F1 (seqeval semantics), per entity type and overall."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): predicted tags of each sentence, e.g. [["B-PER", "I-PER", "O"]].
    references (`list` of `list` of `str`): reference tags, the same lengths.
Returns:
    one dict per entity type {"precision", "recall", "f1", "number"}, and overall_precision, overall_recall,
    overall_f1, overall_accuracy.
"""


class Seqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("string")),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        return shipped_result("seqeval", predictions, references)
