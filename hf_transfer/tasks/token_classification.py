"""Token classification (named-entity recognition and other taggers): one BIO tag per word of a sentence.

Data, from files, folders and Hub ids:

* the Hub's columns: ``tokens`` (a list of words) and ``ner_tags`` (a list of tag ids, or of tag names), as in
  ``conll2003``; ``text_column`` / ``label_column`` name others (left at their sequence-task defaults, ``text`` and
  ``label``, they mean ``tokens`` and ``ner_tags``). Tag names come from ``class_names``, from the column's
  ``ClassLabel`` names, or (tags given as names) from the names in the source;
* CoNLL ``.txt`` files: one ``word<TAB>tag`` a line, a blank line between sentences (``-DOCSTART-`` lines skipped);
  a folder holding ``<split>.txt`` files reads the recipe's split.

Every sentence is checked before training, naming the file and the row: words and tags of one length, no empty
sentence, every tag in the label set, and no ``I-X`` tag that does not continue a ``B-X`` / ``I-X`` (IOB2).

Words are split into sub-words as transformers' token-classification example does: the first sub-word of a word
carries its tag, the other sub-words and the special tokens ``-100`` (no loss, no score). The loss is the token
cross-entropy over the labelled tokens of the source sentences (a sentence's instance weight applies to each of its
tokens). Methods (DANN, MMD, CORAL ...) see one row per non-padding token of the batch, source and target
(:meth:`TokenClassification.method_rows`), each weighted ``1 / tokens in its sentence``.

Metrics are entity-level precision, recall and F1 (micro over entity types), with seqeval's semantics, through the
shipped ``seqeval`` module; ``accuracy`` is the tag accuracy over labelled words.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, RecipeError
from .base import MethodRows, Task
from .registry import register_task

IGNORE_INDEX = -100
#: the files a CoNLL table is read from
CONLL_SUFFIXES = (".txt", ".conll")
#: methods that read one class id or class probabilities per sentence (the token rows have no such thing)
REFUSED_METHODS = {
    "graph_laplacian": "reads one class id per labelled row",
    # Not yet carried to token rows (they would meet a (rows, positions, width) feature where they expect one vector
    # per sentence): refused rather than run wrong.
    "instance_weighting": "weighs whole sentences by their pooled features, which a token classifier does not give",
    "lwf": "distils the pretrained model's pooled features, which a token classifier does not give",
}
#: what ``metrics`` may list: seqeval's scores (the recipe's default pair means the same)
SUPPORTED_METRICS = ("seqeval", "accuracy", "macro_f1")


# ---- reading -----------------------------------------------------------------------------------------------------


def read_conll(path: str | os.PathLike, *, tokens_column: str = "tokens", tags_column: str = "ner_tags",
               field: str = "data"):
    """A CoNLL file as a ``datasets.Dataset`` with a list of words and a list of tag names per sentence."""
    import datasets

    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2 or not parts[0] or not parts[-1].strip():
            raise DataError(f"{field}: {str(path)!r} line {number} ({line[:40]!r}) is not 'word<TAB>tag'; CoNLL files "
                            "hold one word and its tag a line, a blank line between sentences")
        words.append(parts[0])
        tags.append(parts[-1].strip())
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DataError(f"{field}: {str(path)!r} has no sentences")
    return datasets.Dataset.from_dict({tokens_column: [w for w, _ in sentences],
                                       tags_column: [t for _, t in sentences]})


def tokens_column(d: Any) -> str:
    """The words column: ``text_column``, whose sequence-task default ``text`` means ``tokens`` here."""
    return "tokens" if d.text_column in (None, "text") else d.text_column


def tags_column(d: Any) -> str:
    """The tags column: ``label_column``, whose sequence-task default ``label`` means ``ner_tags`` here."""
    return "ner_tags" if d.label_column in (None, "label") else d.label_column


def _tag_names(table: Any, column: str) -> list[str] | None:
    """The ``ClassLabel`` names of a Hub tag column (``Sequence(ClassLabel)``), if it has them."""
    feature = getattr(table, "features", None)
    feature = feature.get(column) if feature else None
    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list) and feature:
        inner = feature[0]
    return list(inner.names) if hasattr(inner, "names") else None


def check_bio(tags: list[str], *, field: str, spec: str, row: int) -> None:
    """Refuse an ``I-X`` tag that does not continue an entity of type ``X`` (IOB2)."""
    previous = "O"
    for position, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise DataError(f"label_column: {field} ({spec!r}) row {row} word {position} has tag {tag!r} with no "
                            f"B-{tag[2:]} before it; an entity starts with B- (IOB2 tags)")
        if tag != "O" and not tag.startswith(("B-", "I-")):
            raise DataError(f"label_column: {field} ({spec!r}) row {row} has tag {tag!r}; tags are O, B-<type> or "
                            "I-<type> (BIO)")
        previous = tag


def align_labels(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Sub-token labels from word tags, as transformers' token-classification example: a word's first sub-token
    gets its tag, its other sub-tokens and the special tokens (``word_ids`` None) get -100."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else word_tags[word])
        previous = word
    return labels


# ---- batches and metrics -----------------------------------------------------------------------------------------


class TokenCollator:
    """The text collator (source rows, then target rows, ``domain`` and ``sample_weight``), with ``labels`` padded to
    the batch's length with -100 (``DataCollatorForTokenClassification``'s semantics); target rows all -100."""

    def __init__(self, base):
        self.base = base

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.base([{k: v for k, v in r.items() if k != "labels"} for r in rows])
        if rows and "labels" in rows[0]:
            length = batch["input_ids"].shape[1]
            left = getattr(self.base.tokenizer, "padding_side", "right") == "left"
            labels = torch.full((batch["input_ids"].shape[0], length), IGNORE_INDEX, dtype=torch.long)
            for i, row in enumerate(rows):
                tags = torch.tensor(row["labels"][:length], dtype=torch.long)
                if left:
                    labels[i, length - len(tags):] = tags
                else:
                    labels[i, :len(tags)] = tags
            batch["labels"] = labels
        return batch


class TokenMetrics:
    """The Trainer's ``compute_metrics`` for token logits ``(N, T, C)`` and labels ``(N, T)`` (-100: not scored):
    ``precision``, ``recall``, ``f1`` (entities, micro over types), ``accuracy`` (tags) and ``<type>_precision``,
    ``<type>_recall``, ``<type>_f1``, through the shipped ``seqeval`` module; ``intervals`` bootstraps over
    sentences."""

    def __init__(self, id2label: dict[int, str] | None):
        self.id2label = {int(k): v for k, v in (id2label or {}).items()}

    def sentences(self, predictions: Any, label_ids: Any) -> tuple[list[list[str]], list[list[str]]]:
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
        predicted = predictions.argmax(-1) if predictions.ndim == label_ids.ndim + 1 else predictions
        pred, true = [], []
        for p_row, l_row in zip(predicted, label_ids):
            keep = l_row != IGNORE_INDEX
            pred.append([self.id2label.get(int(i), "O") for i in p_row[keep]])
            true.append([self.id2label.get(int(i), "O") for i in l_row[keep]])
        return pred, true

    def compute(self, predictions: Any, label_ids: Any) -> dict[str, float]:
        from ..metrics.registry import load_module

        pred, true = self.sentences(predictions, label_ids)
        result = load_module("seqeval").compute(predictions=pred, references=true)
        out = {"precision": result["overall_precision"], "recall": result["overall_recall"],
               "f1": result["overall_f1"], "accuracy": result["overall_accuracy"]}
        for t, v in result.items():
            if isinstance(v, dict):
                out.update({f"{t}_precision": v["precision"], f"{t}_recall": v["recall"], f"{t}_f1": v["f1"]})
        return {k: float(v) for k, v in out.items()}

    def __call__(self, eval_pred) -> dict[str, float]:
        return self.compute(eval_pred.predictions, eval_pred.label_ids)

    def intervals(self, predictions: Any, label_ids: Any, *, num_resamples: int, confidence: float,
                  seed: int = 0) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals over sentences of ``precision``, ``recall``, ``f1`` and ``accuracy``, and of
        each type's ``<type>_precision``, ``<type>_recall`` and ``<type>_f1``."""
        from ..metrics import bootstrap_intervals
        from ..metrics.functional import entity_scores, entity_types, sentence_counts

        pred, true = self.sentences(predictions, label_ids)
        types = entity_types(pred, true)
        entities, tokens = sentence_counts(pred, true, types)

        def score(indices: np.ndarray) -> dict[str, np.ndarray]:
            flat = entity_scores(entities[indices].sum(1), tokens[indices].sum(1), types)
            return {k.removeprefix("overall_"): v for k, v in flat.items() if not k.endswith("_number")}

        return bootstrap_intervals(len(true), score, num_resamples=num_resamples, confidence=confidence, seed=seed)


# ---- the task ----------------------------------------------------------------------------------------------------


class TokenClassification(Task):
    """One tag per word (BIO named entities): ``AutoModelForTokenClassification``."""

    name = "token-classification"
    pipeline_tag = "token-classification"
    auto_class_name = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    # Tags are read from the whole source before training, and CoNLL files are read whole.
    supports_streaming = False
    # The before/after plot draws one feature per example; a tagger's features are per token.
    supports_feature_plot = False
    card_kind = "A token"

    def check_data_args(self, d: Any) -> None:
        # The sequence tasks' column defaults (text, label) mean the Hub's tagging columns here; set them on the
        # recipe, so that every reader of the data fields (and the saved recipe.yaml) sees the same columns.
        d.text_column, d.label_column = tokens_column(d), tags_column(d)
        super().check_data_args(d)
        if d.text_pair_column is not None:
            raise RecipeError(f"text_pair_column: task {self.name} tags one sentence per row; drop text_pair_column")
        if tokens_column(d) == tags_column(d):
            raise RecipeError(f"label_column: is the same column as text_column ({tokens_column(d)!r}); the words "
                              "and the tags need their own columns")

    def check_recipe(self, *, data_args: Any, training_args: Any, methods: list[str],
                     method_configs: dict[str, Any] | None = None, selection_validators: list[str] | None = None
                     ) -> None:
        for name in methods:
            if name in REFUSED_METHODS:
                raise RecipeError(f"method: {name} is not available for task {self.name}: it {REFUSED_METHODS[name]}; "
                                  "use dann, mmd, coral or another feature-alignment method")
        for metric in data_args.metrics:
            if metric not in SUPPORTED_METRICS:
                raise RecipeError(f"metrics: {metric!r} is not a tagging metric; task {self.name} reports seqeval "
                                  "(entity precision, recall, f1, and tag accuracy): set metrics: [seqeval]")
        if data_args.target_data and selection_validators:
            raise RecipeError(f"selection_validators: they score one prediction per example; task {self.name} has "
                              "one per token: set selection_validators: []")

    # ---- data ------------------------------------------------------------------------------------------------

    def read_table(self, spec: Any, d: Any, *, field: str, split: str = "train", config: str | None = None):
        if isinstance(getattr(spec, "specs", None), tuple):  # several files (source_data: [news.txt, politics.txt])
            from ..data import concatenate_tables

            tables = [self.read_table(one, d, field=field, split=split, config=config) for one in spec.specs]
            return concatenate_tables(tables, spec.specs, field=field)
        path = Path(os.path.expanduser(str(spec))) if isinstance(spec, (str, os.PathLike)) else None
        if path is not None and path.is_dir() and (path / f"{split}.txt").is_file():
            path = path / f"{split}.txt"
        if path is not None and path.is_file() and path.suffix.lower() in CONLL_SUFFIXES:
            return read_conll(path, tokens_column=tokens_column(d), tags_column=tags_column(d), field=field)
        return super().read_table(spec, d, field=field, split=split, config=config)

    def input_columns(self, d: Any) -> list[tuple[str, str]]:
        return [(tokens_column(d), "text_column")]

    def check_inputs(self, table: Any, d: Any, *, field: str, spec: str) -> None:
        column = tokens_column(d)
        for row, words in enumerate(table[column]):
            if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
                raise DataError(f"text_column: {field} ({spec!r}) row {row} of column {column!r} holds {words!r}; "
                                f"task {self.name} reads a list of words per row")
            if not words:
                raise DataError(f"text_column: {field} ({spec!r}) row {row} is an empty sentence; drop it")

    def _tags(self, table: Any, d: Any, *, field: str, spec: str, column: str | None = None) -> list[list[Any]]:
        column = column or tags_column(d)
        if column not in table.column_names:
            raise DataError(f"label_column: {field} ({spec!r}) has no column {column!r}; columns: "
                            f"{', '.join(table.column_names)}")
        tags = table[column]
        words = table[tokens_column(d)] if d is not None else [None] * len(tags)
        for row, (tag_row, word_row) in enumerate(zip(tags, words)):
            if not isinstance(tag_row, (list, tuple)):
                raise DataError(f"label_column: {field} ({spec!r}) row {row} holds {tag_row!r}; task {self.name} "
                                "reads a list of tags per row, one per word")
            if word_row is not None and len(tag_row) != len(word_row):
                raise DataError(f"label_column: {field} ({spec!r}) row {row} has {len(tag_row)} tags for "
                                f"{len(word_row)} words; every word needs one tag")
        return [list(t) for t in tags]

    def label_space(self, table: Any, d: Any, *, num_labels: int | None, field: str, spec: str):
        from ..data import LabelSpace

        rows = self._tags(table, d, field=field, spec=spec)
        values = {v for row in rows for v in row}
        if values and all(isinstance(v, str) for v in values):
            # Both tags of every type seen, so that an evaluation set may hold an I-X the training rows lack.
            names = list(d.class_names) if d.class_names else _bio_order(_with_partners(values))
        elif any(isinstance(v, str) for v in values):
            raise DataError(f"label_column: {field} ({spec!r}) mixes tag names and tag ids; use one kind")
        else:
            names = list(d.class_names) if d.class_names else _tag_names(table, tags_column(d))
            if names is None:
                raise DataError(f"class_names: {field} ({spec!r}) gives tags as ids without names; list the tag "
                                "names (class_names: [O, B-PER, I-PER, ...]) in id order")
        if num_labels is not None and num_labels != len(names):
            raise DataError(f"num_labels: {num_labels} given but the tag set has {len(names)} tags: {names}")
        return LabelSpace(names, from_strings=True)

    def encode_labels(self, table: Any, d: Any, space: Any, *, field: str, spec: str, column: str | None = None):
        index = {name: i for i, name in enumerate(space.names)}
        encoded = []
        for row, tags in enumerate(self._tags(table, d, field=field, spec=spec, column=column)):
            names = []
            for tag in tags:
                if isinstance(tag, str):
                    name = tag
                elif isinstance(tag, (int, np.integer)) and 0 <= int(tag) < len(space.names):
                    name = space.names[int(tag)]
                else:
                    name = None
                if name not in index:
                    raise DataError(f"label_column: {field} ({spec!r}) row {row} has tag {tag!r}, which is not in "
                                    f"the label set {space.names}; fix the row or add it to class_names")
                names.append(name)
            check_bio(names, field=field, spec=spec, row=row)
            encoded.append([index[n] for n in names])
        if "labels" in table.column_names:
            table = table.remove_columns("labels")
        return table.add_column("labels", encoded)

    def process(self, table: Any, processor: Any, d: Any, *, keep: tuple[str, ...] = ("labels",),
                desc: str = "Tokenizing"):
        words_column = tokens_column(d)

        def encode(batch: dict[str, list]) -> dict[str, list]:
            out = processor(batch[words_column], is_split_into_words=True, truncation=True, max_length=d.max_length)
            if "labels" in keep and "labels" in batch:
                out["labels"] = [align_labels(out.word_ids(i), tags) for i, tags in enumerate(batch["labels"])]
            out["length"] = [len(ids) for ids in out["input_ids"]]
            return dict(out)

        drop = [c for c in table.column_names if c not in keep or c == "labels"]
        return table.map(encode, batched=True, remove_columns=drop, desc=desc)

    def collator(self, processor: Any):
        return TokenCollator(super().collator(processor))

    # ---- training --------------------------------------------------------------------------------------------

    def default_metrics(self) -> list[str]:
        return ["seqeval"]

    def compute_metrics(self, names: list[str], *, id2label: dict[int, str] | None = None):
        unsupported = [n for n in names if n not in SUPPORTED_METRICS]
        if unsupported:
            raise RecipeError(f"metrics: {unsupported[0]!r} is not a tagging metric; task {self.name} reports "
                              "seqeval: set metrics: [seqeval]")
        return TokenMetrics(id2label)  # run.train sets id2label once the tags are read

    def labelled_rows(self, labels: Any) -> Any:
        # A sentence is labelled when any of its tokens is (target rows are all -100).
        return (labels != IGNORE_INDEX).any(dim=1)

    def task_loss(self, logits: Any, labels: Any, labelled: Any, row_weight: Any, *, global_batch: bool) -> Any:
        """Cross-entropy over the labelled tokens, each weighing its sentence's ``row_weight``: with every weight 1,
        transformers' ``AutoModelForTokenClassification`` loss (the mean over labelled tokens)."""
        import torch.nn.functional as F

        from ..distributed import global_mean_scale

        tokens = (labels != IGNORE_INDEX) & labelled[:, None]
        per_token = F.cross_entropy(logits.float().flatten(0, 1), labels.masked_fill(~tokens, 0).flatten(),
                                    reduction="none").view_as(labels)
        weights = row_weight.to(per_token.dtype)[:, None] * tokens
        total = (per_token * weights).sum()
        if global_batch:
            return total * global_mean_scale(weights.sum().detach())
        return total / weights.sum().clamp_min(1e-12)

    def method_rows(self, *, logits: Any, features: Any, labels: Any, domain: Any, sample_weight: Any = None,
                    inputs: dict[str, Any] | None = None) -> MethodRows:
        """Every non-padding token of the batch is a row: its logits and features, its tag (-100 for target,
        special and continuation tokens), the domain of its sentence, and ``1 / tokens in its sentence`` (times the
        sentence's instance weight, when one is given)."""
        import torch

        mask = (inputs or {}).get("attention_mask")
        mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device) if mask is None else mask.bool()
        mask = mask[: labels.shape[0], : labels.shape[1]]
        per_sentence = 1.0 / mask.sum(dim=1).clamp_min(1).to(torch.float32)
        if sample_weight is not None:
            per_sentence = per_sentence * sample_weight.float()
        sentence = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(mask)[mask]
        return MethodRows(logits[mask], features[mask], labels[mask], domain[sentence], per_sentence[sentence])

    # ---- hf-transfer evaluate --------------------------------------------------------------------------------

    def read_evaluation_table(self, spec: Any, settings: Any, *, split: str = "train", config: str | None = None):
        # Without a saved recipe the settings hold the sequence-task defaults (text, label): the tagging columns here.
        settings.text_column, settings.label_column = tokens_column(settings), tags_column(settings)
        return self.read_table(spec, settings, field="data", split=split, config=config)

    def evaluation_data(self, table: Any, processor: Any, settings: Any, id2label: dict[int, str], *, spec: str):
        """Every sentence checked and its tags read in the model's tag set, words split into sub-words as in
        training (first sub-word scored, words cut by ``max_length`` not scored), every batch padded to the longest
        sentence of the table so that the predictions of all batches stack into one ``(N, T, C)`` array; the labels
        are the matching ``(N, T)`` tag ids, -100 where nothing is scored."""
        from ..data import LabelSpace

        self.check_inputs(table, settings, field="data", spec=spec)
        space = LabelSpace([id2label[i] for i in range(len(id2label))], from_strings=True)
        table = self.encode_labels(table, settings, space, field="data", spec=spec, column=settings.label_column)
        words = [list(w) for w in table[tokens_column(settings)]]
        encoded = processor(words, is_split_into_words=True, truncation=True, max_length=settings.max_length)
        rows = [align_labels(encoded.word_ids(i), tags) for i, tags in enumerate(table["labels"])]
        length = max(len(r) for r in rows)
        left = getattr(processor, "padding_side", "right") == "left"
        labels = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int64)
        for i, row in enumerate(rows):
            if left:
                labels[i, length - len(row):] = row
            else:
                labels[i, :len(row)] = row
        columns = dict(encoded.items())

        def batch_inputs(start: int, stop: int) -> dict[str, Any]:
            return dict(processor.pad({k: v[start:stop] for k, v in columns.items()}, padding="max_length",
                                      max_length=length, return_tensors="pt"))

        return batch_inputs, labels

    # ---- export ----------------------------------------------------------------------------------------------

    def card_fields(self, *, peft_type: str | None, hub_model_id: str | None, merged: bool = False,
                    id2label: dict[int, str] | None = None) -> dict[str, Any]:
        fields = super().card_fields(peft_type=peft_type, hub_model_id=hub_model_id, merged=merged, id2label=id2label)
        if peft_type:  # the shared snippet loads a text adapter as a sequence classifier: a tagger's Auto class here
            from ..cards import where

            labels = {int(k): v for k, v in (id2label or {}).items()}
            model = where(hub_model_id)
            code = ("from peft import AutoPeftModelForTokenClassification\n"
                    "from transformers import AutoTokenizer, pipeline\n"
                    f"id2label = {labels!r}\n"
                    f"model = AutoPeftModelForTokenClassification.from_pretrained({model}, id2label=id2label, "
                    "label2id={name: i for i, name in id2label.items()})\n"
                    f"tokenizer = AutoTokenizer.from_pretrained({model})\n"
                    "tagger = pipeline(\"token-classification\", model=model, tokenizer=tokenizer, "
                    "aggregation_strategy=\"simple\")")
            fields["usage"] = f"```python\n{code}\n```"
            if merged:
                fields["usage"] += ("\n\nThe adapter merged into the base model is in `merged/`, a plain model that "
                                    "`pipeline(\"token-classification\", model=...)` loads.")
        fields["usage"] += ("\n\nPass `aggregation_strategy=\"simple\"` to the pipeline to get whole entities (word "
                            "spans with their type) instead of one tag per sub-word.")
        return fields


def _with_partners(values: set[str]) -> set[str]:
    """``values`` with ``B-X`` and ``I-X`` for every type ``X`` one of them names."""
    types = {v[2:] for v in values if v[:2] in ("B-", "I-")}
    return set(values) | {f"{p}{t}" for t in types for p in ("B-", "I-")}


def _bio_order(values: set[str]) -> list[str]:
    """Tag names in a stable order: ``O`` first, then by entity type, ``B-`` before ``I-``."""
    return sorted(values, key=lambda t: (t != "O", t[2:] if t[:2] in ("B-", "I-") else t, t[:2] != "B-"))


register_task(TokenClassification)
