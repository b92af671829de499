"""Unlabelled text for masked-LM training: read, held out, tokenised, masked.

* :func:`read_texts`: the texts of one or more specs (plain ``.txt`` lines, CoNLL files, tables, folders, Hub ids);
* :func:`split_held_out`: a seeded held-out share of the texts, for the perplexity;
* :func:`tokenize_texts`: whole texts, truncated to ``max_length`` (no concatenation into blocks, so every row is
  one text, as a task model will see it);
* :func:`mask_once`: the evaluation rows masked once, seeded, so that every evaluation (before training, during,
  after) scores the same tokens;
* :class:`PretrainCollator`: training batches masked afresh at every step by
  ``transformers.DataCollatorForLanguageModeling``; pre-masked evaluation batches padded with labels -100.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..masking import Masking

#: Files whose format ``data_format`` decides (anything else is a table, a folder or a Hub id).
TEXT_SUFFIXES = (".txt", ".conll")
#: A CoNLL tag: O, or a B-/I-/E-/S-/L-/U- prefix and a type.
_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")
#: Lines looked at to tell a CoNLL file from plain text.
_SNIFF_LINES = 50


class _Columns:
    """The column names the token-classification task's reader is given (its defaults: tokens, ner_tags)."""

    text_column = None
    label_column = None


def looks_like_conll(path: Path) -> bool:
    """Whether a ``.txt`` file's first non-blank lines are all ``word<TAB or space>tag`` (``-DOCSTART-`` aside):
    prose almost never ends every line in a tag such as ``O`` or ``B-person``."""
    seen = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2 or not _TAG.match(parts[-1].strip()):
                return False
            seen += 1
            if seen >= _SNIFF_LINES:
                break
    return seen > 0


def _conll_texts(path: Path, *, field: str) -> list[str]:
    """A CoNLL file's sentences, words joined with spaces, read by the token-classification task's own reader."""
    from ..tasks import get_task

    table = get_task("token-classification").read_table(str(path), _Columns(), field=field)
    return [" ".join(words) for words in table["tokens"]]


def _line_texts(path: Path, *, field: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{field}: {str(path)!r} line {line} is not UTF-8; save the file as UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _table_texts(spec: str, *, column: str, field: str, split: str, config: str | None) -> list[str]:
    from ..data import load_table

    table = load_table(spec, field=field, split=split, config=config)
    if column not in table.column_names:
        raise DataError(f"text_column: {field} ({spec!r}) has no column {column!r}; columns: "
                        f"{', '.join(table.column_names)}")
    texts = []
    for row, value in enumerate(table[column]):
        if isinstance(value, (list, tuple)) and all(isinstance(w, str) for w in value):
            value = " ".join(value)  # a column of words (CoNLL-style Hub datasets)
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"text_column: {field} ({spec!r}) row {row} of column {column!r} holds {value!r}; "
                            "expected text (or a list of words)")
        if value.strip():
            texts.append(value)
    return texts


def read_one(spec: str, *, data_format: str, column: str, field: str, split: str, config: str | None) -> list[str]:
    """The non-blank texts of one spec (see :class:`~hf_transfer.pretrain.recipe.PretrainArguments`)."""
    path = Path(os.path.expanduser(str(spec)))
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        conll = data_format == "conll" or (
            data_format == "auto" and (path.suffix.lower() == ".conll" or looks_like_conll(path)))
        return _conll_texts(path, field=field) if conll else _line_texts(path, field=field)
    return _table_texts(str(spec), column=column, field=field, split=split, config=config)


def read_texts(specs: list[str], *, data_format: str, column: str, field: str, split: str,
               config: str | None) -> list[str]:
    """Every spec's texts, in order, concatenated. Refuses a spec with no text, naming it."""
    texts: list[str] = []
    for spec in specs:
        found = read_one(spec, data_format=data_format, column=column, field=field, split=split, config=config)
        if not found:
            raise DataError(f"{field}: {spec!r} holds no text (every line or row is blank)")
        texts.extend(found)
    return texts


def split_held_out(texts: list[str], fraction: float, *, seed: int) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a seeded ``fraction`` of the texts held out (at least one), order kept in each."""
    import math

    import numpy as np

    count = max(1, math.ceil(len(texts) * fraction))
    if count >= len(texts):
        raise DataError(f"eval_fraction: {fraction} of {len(texts)} texts leaves none to train on; lower it or give "
                        "eval_data")
    chosen = set(np.random.default_rng(seed).permutation(len(texts))[:count].tolist())
    return ([t for i, t in enumerate(texts) if i not in chosen], [t for i, t in enumerate(texts) if i in chosen])


def tokenize_texts(texts: list[str], tokenizer, *, max_length: int):
    """A ``datasets.Dataset`` of whole texts, truncated to ``max_length`` tokens, with each row's special-token
    mask (no token of it is ever chosen for prediction)."""
    import datasets

    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    return datasets.Dataset.from_dict(dict(encoded))


def mask_once(table, tokenizer, masking: Masking, *, seed: int, field: str = "eval_data"):
    """The rows of ``table`` masked once, as ``DataCollatorForLanguageModeling`` masks a batch, from a generator
    seeded with ``seed``: ``input_ids`` masked and ``labels`` (-100 where nothing is predicted). The same rows and
    seed give the same masks on every process and in every run."""
    import torch

    masker = masking.masker(tokenizer, seed=seed)
    masker.create_rng()
    inputs, labels = [], []
    for ids, special in zip(table["input_ids"], table["special_tokens_mask"]):
        masked, target = masker.torch_mask_tokens(torch.tensor([ids]), special_tokens_mask=torch.tensor([special]))
        inputs.append(masked[0].tolist())
        labels.append(target[0].tolist())
    if not any(t != -100 for row in labels for t in row):
        raise DataError(f"{field}: no token of the {len(labels)} evaluation texts was chosen for prediction (too few "
                        "or too short texts); give more evaluation text or raise mlm_probability")
    return table.remove_columns(["special_tokens_mask"]).remove_columns(["input_ids"]).add_column(
        "input_ids", inputs).add_column("labels", labels)


class PretrainCollator:
    """Training rows (no ``labels``): padded and masked afresh by ``DataCollatorForLanguageModeling``, from the global
    random generator, which the Trainer saves in each checkpoint and restores on resume. Evaluation rows (masked
    once, with ``labels``): padded, labels with -100, by ``DataCollatorForTokenClassification``."""

    def __init__(self, tokenizer, masking: Masking):
        from transformers import DataCollatorForTokenClassification

        self.masker = masking.masker(tokenizer)
        self.padder = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if "labels" in rows[0]:
            return dict(self.padder(rows))
        return dict(self.masker(rows))
