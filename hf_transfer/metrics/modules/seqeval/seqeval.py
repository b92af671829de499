"""Entity-level precision, recall and F1 of a token tagger, with seqeval's semantics (an ``evaluate`` metric, shipped
for offline use).

Entities are read from IOB2, IOB1, IOE or IOBES tags as seqeval's default (lenient, conlleval) mode reads them; an
entity counts as correct when its type and its span both match. The output has the shape of the Hub's ``seqeval``
metric: a dict per entity type (``precision``, ``recall``, ``f1``, ``number`` of reference entities) and
``overall_precision`` / ``overall_recall`` / ``overall_f1`` (micro average over entities) and ``overall_accuracy``
(tag accuracy).
"""

from hf_transfer.metrics import module_base as base  # the module, not its classes: see module_base


class Seqeval(base.ShippedMetric):
    shipped_name = "seqeval"
    shipped_description = "Entity-level precision, recall and F1 (seqeval semantics), per entity type and overall."
    shipped_inputs = """
Args:
    predictions (`list` of `list` of `str`): predicted tags of each sentence, e.g. [["B-PER", "I-PER", "O"]].
    references (`list` of `list` of `str`): reference tags, the same lengths.
Returns:
    one dict per entity type {"precision", "recall", "f1", "number"}, and overall_precision, overall_recall,
    overall_f1, overall_accuracy.
"""
    shipped_features = base.TAG_SEQUENCES
