"""The arithmetic behind the shipped metrics, in NumPy, vectorised over resamples.

Classification scores are computed from confusion matrices ``C[..., t, p]`` (row: true class, column: predicted
class), so one call scores a single evaluation (``(K, K)``) or a whole batch of bootstrap resamples
(``(B, K, K)``). Entity-level scores are computed from per-sentence counts of true, predicted and correct entities.
The ``evaluate`` modules in ``hf_transfer/metrics/modules/`` and the bootstrap both call these functions, so a point
estimate and its interval can never disagree about what a metric means.

Conventions follow scikit-learn and seqeval: averages run over the classes present in the references or the
predictions; a ratio whose denominator is 0 counts as 0 (``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AVERAGES = ("macro", "micro", "weighted", "binary")
CLASSIFICATION_SCORES = ("accuracy", "precision", "recall", "f1")


def confusion_matrix(predictions, references, *, num_classes: int | None = None) -> np.ndarray:
    """``(K, K)`` int64 counts of (reference, prediction) pairs; ``K`` defaults to the largest id + 1."""
    preds = np.asarray(predictions, dtype=np.int64).reshape(-1)
    refs = np.asarray(references, dtype=np.int64).reshape(-1)
    if preds.shape != refs.shape:
        raise ValueError(f"predictions and references differ in length: {preds.size} vs {refs.size}")
    k = num_classes if num_classes is not None else int(max(preds.max(initial=-1), refs.max(initial=-1))) + 1
    return np.bincount(refs * k + preds, minlength=k * k).reshape(k, k)


def resampled_confusion_matrices(predictions, references, indices: np.ndarray, *, num_classes: int) -> np.ndarray:
    """``(B, K, K)`` confusion matrices of the resamples ``indices`` (``(B, n)`` row indices), in one bincount."""
    codes = np.asarray(references, dtype=np.int64) * num_classes + np.asarray(predictions, dtype=np.int64)
    num_resamples = indices.shape[0]
    cells = num_classes * num_classes
    flat = (np.arange(num_resamples, dtype=np.int64)[:, None] * cells + codes[indices]).ravel()
    return np.bincount(flat, minlength=num_resamples * cells).reshape(num_resamples, num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_score(confusion: np.ndarray, score: str, average: str = "macro", *, pos_label: int = 1):
    """``accuracy``, ``precision``, ``recall`` or ``f1`` of confusion matrices ``(..., K, K)``; returns ``(...)``.

    ``average``: ``macro`` (unweighted mean over the classes present in references or predictions), ``micro``
    (from the pooled counts), ``weighted`` (mean weighted by each class's number of references) or ``binary`` (the
    class ``pos_label`` alone). Accuracy ignores ``average``. An empty evaluation scores NaN.
    """
    if score not in CLASSIFICATION_SCORES:
        raise ValueError(f"score must be one of {CLASSIFICATION_SCORES}, got {score!r}")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    confusion = np.asarray(confusion, dtype=np.float64)
    correct = np.diagonal(confusion, axis1=-2, axis2=-1)  # (..., K)
    n_true = confusion.sum(axis=-1)  # references of each class
    n_pred = confusion.sum(axis=-2)  # predictions of each class
    total = n_true.sum(axis=-1)
    if score == "accuracy":
        return np.where(total > 0, _ratio(correct.sum(axis=-1), total), np.nan)
    if average == "micro":
        correct, n_true, n_pred = correct.sum(axis=-1), n_true.sum(axis=-1), n_pred.sum(axis=-1)
    per_class = {
        "precision": lambda: _ratio(correct, n_pred),
        "recall": lambda: _ratio(correct, n_true),
        "f1": lambda: _ratio(2 * correct, n_true + n_pred),
    }[score]()
    if average == "micro":
        value = per_class
    elif average == "binary":
        value = per_class[..., pos_label] if per_class.shape[-1] > pos_label else np.zeros(per_class.shape[:-1])
    elif average == "weighted":
        value = _ratio((per_class * n_true).sum(axis=-1), n_true.sum(axis=-1))
    else:  # macro: only the classes that occur in the references or the predictions
        present = (n_true + n_pred) > 0
        value = _ratio((per_class * present).sum(axis=-1), present.sum(axis=-1))
    return np.where(total > 0, value, np.nan)


# ---- entities (seqeval's default, lenient chunking: IOB1, IOB2, IOE and IOBES tags) ------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; a tag without a type (``"O"``, a bare ``"B"``) has the type ``"_"``."""
    return tag[0], (tag[1:].split("-", maxsplit=1)[-1] or "_")


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one tagged sentence as ``(type, first, last)`` token positions, as seqeval's default mode
    reads them: an ``I-`` tag after ``O`` or after another type starts an entity (IOB1), ``B-`` always starts one."""
    entities = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(chunk)
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def entity_types(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> list[str]:
    """The sorted entity types found in the references or the predictions."""
    return sorted({t for sentence in (*references, *predictions) for t, _, _ in get_entities(sentence)})


def sentence_counts(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                    types: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sentence counts, the rows a bootstrap resamples.

    Returns ``entities`` ``(S, T, 3)``: the number of reference, predicted and correctly predicted (same type and
    span) entities of each type in each sentence; and ``tokens`` ``(S, 2)``: correct tags and tags per sentence.
    """
    if len(predictions) != len(references):
        raise ValueError(f"predictions and references differ in length: {len(predictions)} vs {len(references)}")
    index = {t: i for i, t in enumerate(types)}
    entities = np.zeros((len(references), len(types), 3), dtype=np.int64)
    tokens = np.zeros((len(references), 2), dtype=np.int64)
    for s, (pred, ref) in enumerate(zip(predictions, references)):
        if len(pred) != len(ref):
            raise ValueError(f"sentence {s}: {len(pred)} predicted tags for {len(ref)} reference tags")
        true_set, pred_set = set(get_entities(ref)), set(get_entities(pred))
        for column, found in enumerate((true_set, pred_set, true_set & pred_set)):
            for type_, _, _ in found:
                entities[s, index[type_], column] += 1
        tokens[s] = sum(p == r for p, r in zip(pred, ref)), len(ref)
    return entities, tokens


def entity_scores(entities: np.ndarray, tokens: np.ndarray, types: Sequence[str]) -> dict[str, np.ndarray]:
    """Entity precision, recall and F1 per type and pooled over types ("overall", seqeval's micro average), and
    tag accuracy, from counts summed over sentences: ``entities`` ``(..., T, 3)``, ``tokens`` ``(..., 2)``.

    Keys follow the ``seqeval`` metric of the ``evaluate`` library, flattened: ``overall_precision``,
    ``overall_recall``, ``overall_f1``, ``overall_accuracy`` and ``<type>_precision`` / ``_recall`` / ``_f1`` /
    ``_number`` (the number of reference entities of the type).
    """
    entities = np.asarray(entities, dtype=np.float64)
    n_true, n_pred, correct = entities[..., 0], entities[..., 1], entities[..., 2]
    out: dict[str, np.ndarray] = {}
    for i, type_ in enumerate(types):
        out[f"{type_}_precision"] = _ratio(correct[..., i], n_pred[..., i])
        out[f"{type_}_recall"] = _ratio(correct[..., i], n_true[..., i])
        out[f"{type_}_f1"] = _ratio(2 * correct[..., i], n_true[..., i] + n_pred[..., i])
        out[f"{type_}_number"] = n_true[..., i]
    all_true, all_pred, all_correct = n_true.sum(-1), n_pred.sum(-1), correct.sum(-1)
    out["overall_precision"] = _ratio(all_correct, all_pred)
    out["overall_recall"] = _ratio(all_correct, all_true)
    out["overall_f1"] = _ratio(2 * all_correct, all_true + all_pred)
    tokens = np.asarray(tokens, dtype=np.float64)
    out["overall_accuracy"] = np.where(tokens[..., 1] > 0, _ratio(tokens[..., 0], tokens[..., 1]), np.nan)
    return out


def shipped_result(module: str, predictions, references, *, average: str = "macro", pos_label: int = 1) -> dict:
    """What the shipped ``evaluate`` module ``module`` (``accuracy``, ``f1``, ``precision``, ``recall``,
    ``seqeval``) returns from ``compute``: its one implementation, which the module files call too."""
    if module == "seqeval":
        types = entity_types(predictions, references)
        entities, tokens = sentence_counts(predictions, references, types)
        flat = entity_scores(entities.sum(axis=0), tokens.sum(axis=0), types)
        out = {t: {k: float(flat[f"{t}_{k}"]) for k in ("precision", "recall", "f1")} for t in types}
        for t in types:
            out[t]["number"] = int(flat[f"{t}_number"])
        out.update({k: float(v) for k, v in flat.items() if k.startswith("overall_")})
        return out
    confusion = confusion_matrix(predictions, references)
    if module == "accuracy":
        return {"accuracy": float(classification_score(confusion, "accuracy"))}
    return {module: float(classification_score(confusion, module, average, pos_label=pos_label))}
