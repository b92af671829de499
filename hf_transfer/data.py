"""Load source / target / evaluation data, check it against the recipe, tokenise it, pair it, collate it.

Every dataset goes through ``datasets.load_dataset`` (files, folders and Hub ids alike), so tokenisation is cached
by fingerprint. All checks happen here, before a model is loaded or a step is taken, and fail with a
:class:`~hf_transfer.errors.DataError` that names the recipe field, the file and the fix.

With ``streaming: true`` (docs/streaming.md) the source and target are ``datasets.IterableDataset`` streams instead:
the checks run on a bounded sample (the first ``streaming_sample_size`` rows) before training, and on every other row
lazily, as it is read; :class:`StreamingTrainSet` turns the tokenised streams into the endless, seeded, paired rows
the Trainer consumes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, IterableDataset, Value, concatenate_datasets

from .batching import MODEL_INPUT_KEYS, TARGET_PREFIX, add_batch_labels  # noqa: F401  (also named here)
from .errors import DataError, RecipeError

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
# A streamed target is shuffled with the recipe seed plus this, so that source and target never share an order.
TARGET_SEED_OFFSET = 1_000_003


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """``datasets``' progress bars (the ``Tokenizing ...`` of each ``map``) on or off for a block, so that a run's
    ``disable_tqdm`` silences them as it does the Trainer's; the previous setting comes back afterwards."""
    was_enabled = datasets.is_progress_bar_enabled()
    if was_enabled and not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            datasets.enable_progress_bars()


class InMemoryData(str):
    """A ``datasets.Dataset`` given as ``source_data`` / ``target_data`` / ``eval_data`` (``hf_transfer.train(
    source_data=ds)``), as every HF trainer accepts one. It is a string to everything that reads the recipe (checks,
    messages, ``recipe.yaml``, the model card: ``<in-memory Dataset, 400 rows>``) and carries the table for
    :func:`load_table`."""

    dataset: Dataset

    def __new__(cls, dataset: Dataset):
        text = super().__new__(cls, f"<in-memory Dataset, {len(dataset)} rows>")
        text.dataset = dataset
        return text

    def __deepcopy__(self, memo):  # a recipe copy shares the table (it is never modified in place)
        return self

    def __reduce__(self):
        return (InMemoryData, (self.dataset,))


IN_MEMORY_PREFIX = "<in-memory "


class DataFiles(str):
    """Several files, folders or Hub ids read as one table (``source_data: [news.txt, politics.txt]``): their rows
    one after the other, in the order given (a file listed twice counts twice: a small set can be oversampled). A
    string to every reader of the recipe (``"news.txt + politics.txt"`` in messages and the card) that carries the
    list for :func:`load_table` and the tasks' ``read_table``; ``recipe.yaml`` saves the list."""

    specs: tuple[str, ...]

    def __new__(cls, specs: Sequence[str]):
        text = super().__new__(cls, " + ".join(specs))
        text.specs = tuple(specs)
        return text

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (DataFiles, (list(self.specs),))


def data_files(value: Any, *, field: str) -> DataFiles:
    """A recipe's list of data files as a :class:`DataFiles`; refuses anything but a non-empty list of paths/ids."""
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (str, os.PathLike)) and str(v) for v in value):
        raise RecipeError(f"{field}: expected a non-empty list of files, folders or Hub ids (read as one table), got "
                          f"{value!r}")
    return DataFiles([os.fspath(v) for v in value])


def concatenate_tables(tables: Sequence[Any], specs: Sequence[str], *, field: str) -> Any:
    """The tables of a :class:`DataFiles` as one, refusing files whose columns or column types differ."""
    first = tables[0].column_names
    for table, spec in zip(tables[1:], specs[1:]):
        if first is not None and table.column_names is not None and sorted(table.column_names) != sorted(first):
            raise DataError(f"{field}: {spec!r} has the columns {table.column_names}, {specs[0]!r} has {first}; "
                            "every file of the list needs the same columns")
    try:
        return datasets.concatenate_datasets(list(tables))
    except ValueError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{field}: the files {list(specs)} hold the same columns with different types ({reason}); "
                        "give them the same types") from None


def in_memory_data(value: Any, *, field: str, split: str) -> InMemoryData:
    """``value`` (a ``datasets.Dataset``, or a ``DatasetDict`` whose ``split`` is taken) as a recipe data field."""
    if isinstance(value, datasets.DatasetDict):
        split_field = field.replace("_data", "_split")
        if split not in value:
            raise DataError(f"{split_field}: {split!r} is not a split of the DatasetDict given as {field} (splits: "
                            f"{', '.join(value)}); set {split_field}")
        value = value[split]
    if not isinstance(value, Dataset):
        raise DataError(f"{field}: expected a file, folder or Hub id (or a datasets.Dataset / DatasetDict), got "
                        f"{type(value).__name__}")
    if len(value) == 0:
        raise DataError(f"{field}: the in-memory Dataset has no rows")
    return InMemoryData(value)


def _looks_like_path(spec: str) -> bool:
    suffix = Path(spec).suffix.lower()
    return spec.startswith((".", "/", "~")) or suffix in FILE_BUILDERS or suffix == ".npz" or os.sep + os.sep in spec


def load_table(
    spec: str, *, field: str, split: str = "train", config: str | None = None, streaming: bool = False
) -> Dataset | IterableDataset:
    """Load one table from a file, a folder or a Hub dataset id.

    Args:
        spec: path to a ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file, a folder ``load_dataset``
            understands (an ``imagefolder`` of class sub-folders included), a NumPy ``.npz`` of images, or a Hub
            dataset id.
        field: the recipe field the spec came from, for error messages (``"source_data"``).
        split, config: Hub / folder split and configuration. For a ``.npz`` file, ``config`` is the key prefix
            (``mnist`` reads ``mnist_x`` / ``mnist_y``; none reads ``x`` / ``y``); see
            :func:`hf_transfer.vision.data.load_npz`.
        streaming: return a ``datasets.IterableDataset`` that reads rows as they are iterated (nothing is
            downloaded or converted to Arrow up front). Whether it has rows is only known once it is read: see
            :func:`take_rows`.
    """
    if isinstance(spec, InMemoryData):
        return spec.dataset.to_iterable_dataset() if streaming else spec.dataset
    if isinstance(spec, DataFiles):
        tables = [load_table(one, field=field, split=split, config=config, streaming=streaming) for one in spec.specs]
        return concatenate_tables(tables, spec.specs, field=field)
    if spec.startswith(IN_MEMORY_PREFIX):  # a recipe.yaml saved from a run on an in-memory Dataset
        raise DataError(f"{field}: {spec} was an in-memory datasets.Dataset, which a recipe file cannot hold; pass a "
                        "file, folder or Hub id (or the Dataset itself to hf_transfer.train)")
    path = Path(os.path.expanduser(spec))
    try:
        if path.is_file() and path.suffix.lower() == ".npz":
            if streaming:
                raise DataError(f"{field}: {spec!r} is a NumPy array file, which is read whole; set streaming: false")
            from .vision.data import load_npz

            table = load_npz(path, field=field, prefix=config)
        elif path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{field}: {spec!r} has an unsupported extension; use one of {', '.join(sorted(FILE_BUILDERS))}"
                )
            if path.stat().st_size == 0:
                raise DataError(f"{field}: {spec!r} is empty; it needs at least one row")
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            table = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming, **kwargs)
        elif path.is_dir():
            _check_one_format(path, field=field, spec=spec)
            table = datasets.load_dataset(str(path), config, split=split, streaming=streaming)
        elif _looks_like_path(spec):
            raise DataError(f"{field}: file {spec!r} does not exist; check the path (relative to {os.getcwd()})")
        else:
            table = datasets.load_dataset(spec, config, split=split, streaming=streaming)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (DatasetNotFoundError, ConnectionError, ArrowInvalid ...)
        if path.exists():  # a local file or folder: say which line is wrong, never blame the Hub
            bad_line = _first_bad_json_line(path)
            if bad_line:
                raise DataError(f"{field}: {bad_line}; fix that line") from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hub_id = not path.exists() and not _looks_like_path(spec)
        hint = " (the Hub is offline: point it at a local file or folder)" if offline and hub_id else ""
        raise DataError(f"{field}: cannot read {spec!r}: {first_line}{hint}") from None
    if isinstance(table, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"{field}: {spec!r} has several splits; choose one with {field.replace('_data', '_split')}")
    if not streaming and len(table) == 0:
        raise DataError(f"{field}: {spec!r} has no rows")
    return table


# Data-file formats a folder can hold; a folder mixing two of them would be read as one (the others dropped).
_FORMAT_OF_SUFFIX = {".jsonl": "JSON Lines", ".json": "JSON Lines", ".csv": "CSV", ".tsv": "TSV",
                     ".parquet": "Parquet"}
# imagefolder's per-image metadata sits beside the images in these files; they are not data files of their own.
_METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def _check_one_format(folder: Path, *, field: str, spec: str) -> None:
    """Refuse a folder holding data files of several formats (``a.jsonl`` and ``b.csv``), of which ``load_dataset``
    would silently read only one."""
    first_of_format: dict[str, Path] = {}
    for file in sorted(folder.rglob("*")):
        parts = file.relative_to(folder).parts
        if not file.is_file() or file.name in _METADATA_FILES or any(p.startswith(".") for p in parts):
            continue
        fmt = _FORMAT_OF_SUFFIX.get(file.suffix.lower())
        if fmt is not None:
            first_of_format.setdefault(fmt, file)
    if len(first_of_format) > 1:
        found = ", ".join(f"{fmt} ({str(file.relative_to(folder))!r})" for fmt, file in first_of_format.items())
        raise DataError(f"{field}: folder {spec!r} mixes data formats: {found}; only one would be read. Keep one "
                        "format per folder, or name the file")


def _first_bad_json_line(path: Path) -> str | None:
    """``"'a.jsonl' line 7 is not valid JSON: <cause>"`` for the first malformed line of a JSON Lines file (or of
    the JSON Lines files of a folder), else ``None``."""
    import json

    files = [path] if path.is_file() else sorted(path.rglob("*.jsonl"))
    for file in files:
        if file.suffix.lower() != ".jsonl":
            continue
        with open(file, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    return f"{str(file)!r} line {number} is not valid JSON: {err.msg} (column {err.colno})"
    return None


def check_text_column(table: Dataset, column: str, *, field: str, spec: str, option: str) -> None:
    """Refuse a text column holding anything but text (numbers, nulls, an integer label column named as the text
    column), naming the first such row: tokenising would turn those into empty inputs without a word."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = table.with_format("arrow")[column]
    if isinstance(values, pa.Table):
        values = values.column(0)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        if not values.null_count:
            return
        row = int(pc.index(pc.is_null(values), True).as_py())
        value = None
    else:  # a column of numbers, lists ...: its first row already is not text
        row, value = 0, values[0].as_py()
    kinds = {"int": "a number", "float": "a number", "bool": "true/false", "list": "a list", "dict": "a mapping"}
    shown = "null" if value is None else f"{value!r} ({kinds.get(type(value).__name__, type(value).__name__)})"
    raise DataError(f"{option}: {field} ({spec!r}) row {row} holds {shown}, not text; every row needs text "
                    f"(is {column!r} the right column?)")


def require_column(table: Dataset, column: str, *, field: str, spec: str, option: str) -> None:
    if column not in table.column_names:
        raise DataError(
            f"{option}: column {column!r} is not in {field} ({spec!r}); its columns are "
            f"{', '.join(table.column_names)}. Set {option} to one of them"
        )


@dataclass
class LabelSpace:
    """Class names, in id order. ``from_strings`` is True when the data gave names, not ids."""

    names: list[str]
    from_strings: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


def infer_label_space(table: Dataset, column: str, *, num_labels: int | None, field: str, spec: str,
                      class_names: Sequence[str] | None = None) -> LabelSpace:
    """Work out the classes from the source labels (or the given ``num_labels`` / ``class_names``).

    Integer ids must be ``0..n-1`` as they occur (one stray id such as 100000 among 0/1 is refused with its row,
    instead of building a 100,001-class model) unless ``num_labels`` or ``class_names`` says how many classes there
    are. Name labels are sorted, or put in the order of ``class_names`` when it is given."""
    feature = table.features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        if num_labels is not None and num_labels != len(names):
            raise DataError(f"num_labels: {num_labels} given but {field} ({spec!r}) declares {len(names)} classes")
        return LabelSpace(names)
    values = table[column]
    if any(v is None for v in values):
        row = next(i for i, v in enumerate(values) if v is None)
        raise DataError(f"label_column: {field} ({spec!r}) row {row} has no label; every source row needs one")
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        if class_names:  # the names in the user's order; a label that is not one of them is refused
            known = set(class_names)
            row = next((i for i, v in enumerate(values) if v not in known), None)
            if row is not None:
                raise DataError(f"label_column: {field} ({spec!r}) row {row} has label {values[row]!r}, which is not "
                                f"in class_names {list(class_names)}; fix the row or add the name")
            return LabelSpace(list(class_names), from_strings=True)
        names = sorted(set(values))
        if num_labels is not None and num_labels != len(names):
            raise DataError(f"num_labels: {num_labels} given but {field} ({spec!r}) has {len(names)} label names")
        return LabelSpace(names, from_strings=True)
    ids = _as_int_labels(values, field=field, spec=spec)
    if num_labels is None and class_names:
        num_labels = len(class_names)
    if num_labels is None:
        _check_contiguous(ids, field=field, spec=spec)
    count = num_labels if num_labels is not None else max(2, int(ids.max()) + 1)
    _check_range(ids, count, field=field, spec=spec)
    return LabelSpace([str(i) for i in range(count)])


def _check_contiguous(ids: np.ndarray, *, field: str, spec: str) -> None:
    """Inferred classes are the ids present: they must be 0..n-1. Names the first row above the first missing id."""
    present = np.unique(ids)
    if present.size < 2 or present[0] < 0 or int(present[-1]) + 1 == present.size:
        return  # a single class and negative ids have their own errors
    gap = int(np.flatnonzero(present != np.arange(present.size))[0])  # the first id that never occurs
    row = int(np.flatnonzero(ids > gap)[0])
    shown = (", ".join(map(str, present.tolist())) if present.size <= 10
             else f"{present.size} ids from {int(present[0])} to {int(present[-1])}")
    raise DataError(
        f"label_column: {field} ({spec!r}) row {row} has label {int(ids[row])}, but class {gap} never occurs "
        f"(labels present: {shown}); class ids must be 0..n-1: fix that row, or set num_labels (or class_names) if "
        f"there really are {int(present[-1]) + 1} classes"
    )


def _as_int_labels(values: list[Any], *, field: str, spec: str, rows: Sequence[int] | None = None) -> np.ndarray:
    for i, value in enumerate(values):
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        ok = ok or (isinstance(value, float) and float(value).is_integer())
        if not ok:
            row = i if rows is None else rows[i]
            raise DataError(
                f"label_column: {field} ({spec!r}) row {row} has label {value!r}; labels must be integer class ids "
                "or class-name strings"
            )
    return np.asarray(values, dtype=np.int64)


def _check_range(
    ids: np.ndarray, num_labels: int, *, field: str, spec: str, rows: Sequence[int] | None = None
) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= num_labels))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"label_column: {field} ({spec!r}) row {i if rows is None else rows[i]} has label {int(ids[i])}, outside "
            f"0..{num_labels - 1} (num_labels={num_labels}); fix the data or set num_labels"
        )


def label_ids(
    values: list[Any],
    feature: Any,
    space: LabelSpace,
    *,
    field: str,
    spec: str,
    rows: Sequence[int] | None = None,
    unknown_hint: str = "source and target must share one label set",
) -> np.ndarray:
    """Class ids (int64) of label ``values`` in ``space``, every value checked.

    The one place labels are checked: :func:`encode_labels` calls it on a whole table, a streamed table calls it on
    each batch as it is read (see :class:`_StreamLabels`). ``feature`` is the column's ``datasets`` feature (``None``
    when a stream does not declare it); ``rows`` are the row numbers of ``values`` for error messages (default
    ``0..n-1``); ``unknown_hint`` ends the error for a class name outside ``space``.
    """
    if isinstance(feature, ClassLabel):
        if feature.names != space.names:
            raise DataError(
                f"label_column: {field} ({spec!r}) classes {feature.names} differ from the source classes "
                f"{space.names}"
            )
        return np.asarray(values, dtype=np.int64)
    if space.from_strings:
        index = {name: i for i, name in enumerate(space.names)}
        unknown = [i for i, v in enumerate(values) if v not in index]
        if unknown:
            names = sorted({str(values[i]) for i in unknown})
            first = unknown[0] if rows is None else rows[unknown[0]]
            raise DataError(
                f"label_column: {field} ({spec!r}) has labels {names[:5]} that the source does not have (first at "
                f"row {first}; source labels: {space.names}); {unknown_hint}"
            )
        return np.asarray([index[v] for v in values], dtype=np.int64)
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise DataError(
            f"label_column: {field} ({spec!r}) row {missing[0] if rows is None else rows[missing[0]]} has no label"
        )
    if any(isinstance(v, str) for v in values):  # class names (e.g. from class_names) where the source has ids
        index = {name: i for i, name in enumerate(space.names)}
        values = [index.get(v, v) if isinstance(v, str) else v for v in values]
    ids = _as_int_labels(values, field=field, spec=spec, rows=rows)
    _check_range(ids, space.num_labels, field=field, spec=spec, rows=rows)
    return ids


def encode_labels(table: Dataset, column: str, space: LabelSpace, *, field: str, spec: str) -> Dataset:
    """Add an int64 ``labels`` column in the label space (names mapped to ids), checking every value."""
    ids = label_ids(table[column], table.features[column], space, field=field, spec=spec)
    if "labels" in table.column_names:  # a column called `labels` (the label column itself, or another) is replaced
        table = table.remove_columns("labels")
    return table.add_column("labels", ids.tolist())


def tokenize(
    table: Dataset,
    tokenizer,
    *,
    text_column: str,
    text_pair_column: str | None,
    max_length: int,
    keep: tuple[str, ...] = ("labels",),
    desc: str = "Tokenizing",
) -> Dataset:
    """Tokenise without padding (the collator pads each batch to its longest row) and add a ``length`` column
    for length-grouped sampling. Cached by ``datasets`` through the table's fingerprint."""

    def texts_of(batch: dict[str, list], column: str, option: str) -> list[str]:
        # Tables are checked row by row before this (check_text_column); this stops a streamed row that is not
        # text, which would otherwise become "" and train as an empty input.
        values = batch[column]
        bad = next((v for v in values if not isinstance(v, str)), None)
        if bad is not None or any(v is None for v in values):
            raise DataError(f"{option}: a row of column {column!r} holds {bad!r}, not text; every row needs text")
        return values

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = texts_of(batch, text_column, "text_column")
        pairs = texts_of(batch, text_pair_column, "text_pair_column") if text_pair_column else None
        out = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    drop = [c for c in column_names(table) if c not in keep]
    if isinstance(table, IterableDataset):  # a stream is tokenised lazily, batch by batch, as it is read
        return table.map(encode, batched=True, remove_columns=drop)
    return table.map(encode, batched=True, remove_columns=drop, desc=desc)


def _target_columns(columns: Sequence[str]) -> list[str]:
    """The target columns a paired row carries (under the ``target_`` prefix): model inputs and ``length``. Target
    labels, and anything else, never get into a paired row."""
    return [c for c in columns if c in MODEL_INPUT_KEYS or c == "length"]


def pair_with_target(source: Dataset, target: Dataset, *, seed: int) -> Dataset:
    """One row per (source example, target example) pair, for methods that see both domains at every step.

    The table has ``max(len(source), len(target))`` rows: the shorter side repeats, each pass over it in a fresh
    seeded order, so every row of both sides is used in an epoch. Target columns get the ``target_`` prefix and
    target labels are dropped here, so they can never reach a loss. The pairing is fixed by ``seed``, so a
    resumed run sees the same pairs; the Trainer's sampler still shuffles the pairs each epoch.
    """
    rng = np.random.default_rng(seed)
    n = max(len(source), len(target))

    def cycled(size: int) -> np.ndarray:
        reps = -(-n // size)
        return np.concatenate([rng.permutation(size) for _ in range(reps)])[:n]

    src = source.select(cycled(len(source)))
    tgt = target.select(cycled(len(target)))
    keep = _target_columns(tgt.column_names)
    tgt = tgt.remove_columns([c for c in tgt.column_names if c not in keep])
    tgt = tgt.rename_columns({c: TARGET_PREFIX + c for c in tgt.column_names})
    paired = concatenate_datasets([src.flatten_indices(), tgt.flatten_indices()], axis=1)
    if "length" not in paired.column_names:  # image rows have no length
        return paired
    lengths = np.maximum(np.asarray(paired["length"]), np.asarray(paired[TARGET_PREFIX + "length"]))
    paired = paired.remove_columns(["length", TARGET_PREFIX + "length"])
    return paired.add_column("length", lengths.tolist())


def pair_rows(source_row: dict[str, Any], target_row: dict[str, Any]) -> dict[str, Any]:
    """One paired row from a source row and a target row: the row-by-row form of :func:`pair_with_target` (same
    columns, same ``length``), for streams."""
    row = dict(source_row)
    row.update({TARGET_PREFIX + c: target_row[c] for c in _target_columns(target_row) if c != "length"})
    if "length" in row and "length" in target_row:
        row["length"] = max(row["length"], target_row["length"])
    return row


class TransferCollator:
    """Pad a batch of (possibly paired) rows into one model batch.

    Source rows come first, then target rows; both are padded to one length so that one forward pass serves both
    (which also keeps DDP to one forward per backward). Adds ``domain`` (0 source, 1 target) and sets target
    ``labels`` to -100. ``sample_weight`` passes through for source rows (0 for target rows).
    """

    def __init__(self, tokenizer, *, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        source = [{k: r[k] for k in MODEL_INPUT_KEYS if k in r} for r in rows]
        target = [
            {k: r[TARGET_PREFIX + k] for k in MODEL_INPUT_KEYS if TARGET_PREFIX + k in r}
            for r in rows
            if TARGET_PREFIX + "input_ids" in r
        ]
        batch = self.tokenizer.pad(
            source + target, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        return add_batch_labels(dict(batch), rows, num_target=len(target))


def accuracy_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 from a ``transformers.EvalPrediction``: the default ``metrics`` of a classification
    recipe, through the shipped ``evaluate`` modules (:func:`hf_transfer.metrics.build_compute_metrics`)."""
    from .metrics import DEFAULT_CLASSIFICATION_METRICS, build_compute_metrics

    return build_compute_metrics(DEFAULT_CLASSIFICATION_METRICS)(eval_pred)


@dataclass
class RawData:
    """The recipe's tables, loaded and checked, with labels encoded; nothing tokenised yet.

    With ``streaming: true``, ``source`` and ``target`` are ``IterableDataset`` streams (the source's labels are
    encoded and checked lazily, row by row) and ``source_sample`` / ``target_sample`` hold their first
    ``streaming_sample_size`` rows, read and checked up front."""

    source: Dataset | IterableDataset
    target: Dataset | IterableDataset | None
    eval: Dataset | None
    labels: LabelSpace
    source_sample: Dataset | None = None
    target_sample: Dataset | None = None


def _task_of(d, task):
    """The task whose hooks read the data (:mod:`hf_transfer.tasks`): the one given, else the recipe's (its data
    arguments resolve it, so that this module never imports the tasks, which build on it)."""
    return task if task is not None else d.resolved_task


def _check_input_columns(table: Dataset, d, task, *, field: str, spec: str, pairs: bool = True) -> None:
    """The task's input columns are in ``table`` (the text pair only where ``pairs``), and their values check."""
    for column, option in task.input_columns(d):
        if pairs or option != "text_pair_column":
            require_column(table, column, field=field, spec=spec, option=option)
    task.check_inputs(table, d, field=field, spec=spec)


def _check_source_columns(table: Dataset, d, task) -> None:
    for column, option in task.input_columns(d):
        require_column(table, column, field="source_data", spec=d.source_data, option=option)
    require_column(table, d.label_column, field="source_data", spec=d.source_data, option="label_column")
    task.check_inputs(table, d, field="source_data", spec=d.source_data)


def _distinct(values: list[Any]) -> set:
    """The distinct labels of a column (a multi-label row's list counts as one value)."""
    return {tuple(v) if isinstance(v, list) else v for v in values}


def with_class_names(space: LabelSpace, d) -> LabelSpace:
    """``space`` with the recipe's ``class_names`` (``d.class_names``) as the names of integer class ids."""
    return _with_class_names(space, d)


def _with_class_names(space: LabelSpace, d) -> LabelSpace:
    if not d.class_names:
        return space
    if space.from_strings:
        return space  # infer_label_space already put the names in class_names' order
    if len(d.class_names) != space.num_labels:
        raise DataError(f"class_names: {len(d.class_names)} names given for {space.num_labels} classes in source_data")
    return LabelSpace(list(d.class_names))


def _check_training_split(source: Dataset, fraction: float, *, seed: int) -> None:
    """Refuse a ``source_eval_fraction`` that leaves a single class to train on; warn when it holds out more rows
    than it trains on. The split is the one :func:`prepare_data` makes (same length, same seed: the same rows)."""
    if not fraction or len(source) < 10:
        return
    # An in-memory copy of the labels alone: no cache files are written for this check.
    split = Dataset.from_dict({"labels": source["labels"]}).train_test_split(test_size=fraction, seed=seed)
    train, held_out = split["train"]["labels"], split["test"]["labels"]
    if len(_distinct(train)) < 2:
        raise DataError(
            f"source_eval_fraction: holding out {fraction} of the {len(source)} source rows leaves {len(train)} "
            f"row(s) of a single class to train on; lower source_eval_fraction (e.g. 0.1) or add rows"
        )
    if len(train) < len(held_out):
        logger.warning("source_eval_fraction %s holds out %d of the %d source rows and trains on only %d; lower it "
                       "(e.g. 0.1) unless that is meant", fraction, len(held_out), len(source), len(train))


def _load_eval(d, target: Dataset | None, space: LabelSpace, *, seed: int, task=None) -> Dataset | None:
    """``eval_data`` (always read whole: evaluation sets are small), else the target's own labelled rows."""
    task = _task_of(d, task)
    evaluation = None
    if d.eval_data:
        evaluation = task.read_table(d.eval_data, d, field="eval_data", split=d.eval_split, config=d.eval_config)
        _check_input_columns(evaluation, d, task, field="eval_data", spec=d.eval_data, pairs=False)
        require_column(evaluation, d.label_column, field="eval_data", spec=d.eval_data, option="label_column")
        evaluation = task.encode_labels(evaluation, d, space, field="eval_data", spec=d.eval_data)
    elif target is not None and d.label_column in target.column_names:
        # The target's own labels evaluate it; training only ever sees the target's texts.
        evaluation = task.encode_labels(target, d, space, field="target_data", spec=d.target_data)
    if evaluation is not None and d.max_eval_samples:
        evaluation = evaluation.shuffle(seed=seed).select(range(min(d.max_eval_samples, len(evaluation))))
    return evaluation


def load_raw_data(data_args, *, num_labels: int | None = None, seed: int = 42, task=None) -> RawData:
    """Load and validate every table a recipe names. Cheap enough to run before the model is loaded.

    ``task`` (:class:`hf_transfer.tasks.Task`, default: the recipe's) says which columns are inputs, how their
    values are checked and how labels are read."""
    d = data_args
    task = _task_of(d, task)
    if getattr(d, "streaming", False):
        return _load_streams(d, num_labels=num_labels, seed=seed, task=task)
    source = task.read_table(d.source_data, d, field="source_data", split=d.source_split, config=d.source_config)
    _check_source_columns(source, d, task)
    # Labels are checked on the whole file, before any subsample, so that an error names the file's row.
    space = task.label_space(source, d, num_labels=num_labels, field="source_data", spec=d.source_data)
    source = task.encode_labels(source, d, space, field="source_data", spec=d.source_data)
    if d.max_source_samples:
        source = source.shuffle(seed=seed).select(range(min(d.max_source_samples, len(source))))
    if len(_distinct(source["labels"])) < 2:
        raise DataError(
            f"label_column: source_data ({d.source_data!r}) has a single class; training needs two or more"
        )
    _check_training_split(source, d.source_eval_fraction, seed=seed)

    target = None
    if d.target_data:
        target = task.read_table(d.target_data, d, field="target_data", split=d.target_split, config=d.target_config)
        _check_input_columns(target, d, task, field="target_data", spec=d.target_data, pairs=False)
        if d.max_target_samples:
            target = target.shuffle(seed=seed).select(range(min(d.max_target_samples, len(target))))

    evaluation = _load_eval(d, target, space, seed=seed, task=task)
    task.check_loaded({"source_data": (source, d.source_data), "target_data": (target, d.target_data),
                       "eval_data": (evaluation, d.eval_data)}, d)
    return RawData(source, target, evaluation, space)


@dataclass
class PreparedData:
    """Tokenised tables ready for the Trainer.

    With ``streaming: true``, ``train`` and ``target`` are tokenised ``IterableDataset`` streams (one pass each,
    through a seeded shuffle buffer; ``run.train`` turns them into a :class:`StreamingTrainSet` after the methods'
    ``prepare`` hooks) and
    ``sample_rows`` is ``streaming_sample_size``: how many rows of a stream a bounded computation (instance-weight
    estimation, diagnostics) may read. ``None`` for tables."""

    train: Dataset | IterableDataset
    source_eval: Dataset | None
    target_eval: Dataset | None
    target: Dataset | IterableDataset | None
    labels: LabelSpace
    sample_rows: int | None = None


def prepare_data(raw: RawData, tokenizer, data_args, *, seed: int = 42, task=None) -> PreparedData:
    """Turn tables into model rows with the task's :meth:`~hf_transfer.tasks.Task.process` (tokenised text; image
    tables are only narrowed to their image column) and hold out a source slice for ``source_accuracy``. Pairing
    with target rows (:func:`pair_with_target`) comes later, after any method has changed the source rows (e.g.
    weighted them).

    Streams are shuffled and tokenised lazily, in that order: the shuffle buffer (``streaming_shuffle_buffer`` rows,
    seeded from ``seed``) holds raw rows, not token lists, and only the rows training reads are ever tokenised. The
    held-out source slice is a seeded ``source_eval_fraction`` of the source sample's rows (the first
    ``streaming_sample_size``), which the training stream filters out by row number."""
    d = data_args
    task = _task_of(d, task)

    def process(table: Dataset, keep: tuple[str, ...] = ("labels",), desc: str = "Tokenizing") -> Dataset:
        return task.process(table, tokenizer, d, keep=keep, desc=desc)
    target_eval = process(raw.eval, desc="Tokenizing eval") if raw.eval is not None else None
    if isinstance(raw.source, IterableDataset):
        buffer = d.streaming_shuffle_buffer

        def shuffled(stream: IterableDataset, stream_seed: int) -> IterableDataset:
            return stream.shuffle(seed=stream_seed, buffer_size=buffer) if buffer else stream

        sample = process(raw.source_sample, desc="Tokenizing source sample")
        source_eval, train = None, raw.source
        if d.source_eval_fraction > 0 and len(sample) >= 10:
            size = min(math.ceil(d.source_eval_fraction * len(sample)), len(sample) - 1)
            held = sorted(np.random.default_rng(seed).choice(len(sample), size=size, replace=False).tolist())
            source_eval = sample.select(held)
            train = train.filter(_NotHeldOut(held), with_indices=True)  # the held-out rows never train
        train = process(shuffled(train, seed))
        target = None
        if raw.target is not None:  # its own seed, so that the two sides never share an order
            target = process(shuffled(raw.target, seed + TARGET_SEED_OFFSET), keep=())
        return PreparedData(train, source_eval, target_eval, target, raw.labels,
                            sample_rows=d.streaming_sample_size)
    target = process(raw.target, keep=(), desc="Tokenizing target") if raw.target is not None else None
    source = process(raw.source, desc="Tokenizing source")
    source_eval = None
    if d.source_eval_fraction > 0 and len(source) >= 10:
        split = source.train_test_split(test_size=d.source_eval_fraction, seed=seed)
        source, source_eval = split["train"], split["test"]
    return PreparedData(source, source_eval, target_eval, target, raw.labels)


# ---- streaming: true ---------------------------------------------------------------------------------------------


def column_names(table: Dataset | IterableDataset) -> list[str]:
    """A table's columns. A stream whose features are not declared (a Hub dataset without them, or after a ``map``
    that did not declare its output) is asked for its first row."""
    if table.column_names is not None:
        return list(table.column_names)
    first = next(iter(table.take(1)), None)
    return list(first) if first is not None else []


def _unreadable(field: str, spec: str, err: Exception) -> DataError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(
        f"{field}: a row of {spec!r} cannot be read: {detail}. A streamed file keeps the column types of its first "
        "rows (a label that was an integer there must stay one); fix that value in the data"
    )


def take_rows(stream: IterableDataset, rows: int, *, field: str, spec: str) -> Dataset:
    """The first ``rows`` rows of a stream as a map-style ``Dataset``; only those rows are read. The stream's
    declared features (a Hub dataset's ``ClassLabel``) are kept. Raises :class:`DataError` when it has no rows."""
    import pyarrow as pa

    try:
        head = list(stream.take(rows))
    except pa.ArrowException as err:  # a value the reader cannot cast to the column's type
        raise _unreadable(field, spec, err) from None
    if not head:
        raise DataError(f"{field}: {spec!r} has no rows")
    return Dataset.from_list(head, features=stream.features)


def bounded_rows(table: Dataset | IterableDataset, rows: int, *, seed: int = 0, field: str = "data",
                 spec: str = "") -> Dataset:
    """At most ``rows`` rows of a table, as a map-style ``Dataset``: a seeded random subset of a ``Dataset``, the
    first rows an ``IterableDataset`` yields (reading only those, plus what its shuffle buffer holds). What every
    bounded computation (a diagnostic plot, a validator, a weight estimate) calls, so that none of them ever
    materialises a stream."""
    if isinstance(table, IterableDataset):
        return take_rows(table, rows, field=field, spec=spec)
    return table.shuffle(seed=seed).select(range(rows)) if len(table) > rows else table


class _NotHeldOut:
    """``filter`` predicate of a streamed source: keeps every row but the held-out ones (row numbers of the stream)."""

    def __init__(self, rows: Sequence[int]):
        self.rows = frozenset(rows)

    def __call__(self, row: dict[str, Any], index: int) -> bool:
        return index not in self.rows


class _StreamLabels:
    """The ``map`` function that encodes and checks the labels of a streamed table, batch by batch, with
    :func:`label_ids` (so a stream's rows are held to exactly the rules of a table's); rows count from the start of
    the stream, so an error names the row of the file."""

    def __init__(self, column: str, feature: Any, space: LabelSpace, *, field: str, spec: str, hint: str):
        self.column, self.feature, self.space = column, feature, space
        self.field, self.spec, self.hint = field, spec, hint

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        ids = label_ids(batch[self.column], self.feature, self.space, field=self.field, spec=self.spec, rows=indices,
                        unknown_hint=self.hint)
        return {"labels": ids.tolist()}


def _load_streams(d, *, num_labels: int | None, seed: int, task=None) -> RawData:
    """``load_raw_data`` for ``streaming: true``: everything that can be checked on the first
    ``streaming_sample_size`` rows is checked now; every later row is checked when it is read."""
    rows = d.streaming_sample_size
    source = load_table(d.source_data, field="source_data", split=d.source_split, config=d.source_config,
                        streaming=True)
    # take/skip pin the order of a stream's shards (files): a later shuffle then reorders rows only through its buffer,
    # so a row number (in an error message, or naming a held-out row) means the same row in every pass.
    source = source.take(d.max_source_samples) if d.max_source_samples else source.skip(0)
    task = _task_of(d, task)
    sample = take_rows(source, rows, field="source_data", spec=d.source_data)
    _check_source_columns(sample, d, task)
    space = task.label_space(sample, d, num_labels=num_labels, field="source_data", spec=d.source_data)
    sample = task.encode_labels(sample, d, space, field="source_data", spec=d.source_data)
    if len(set(sample["labels"])) < 2:
        raise DataError(
            f"label_column: the first {len(sample)} rows of source_data ({d.source_data!r}) have a single class; "
            "streaming infers the classes from them (streaming_sample_size): shuffle the data or raise "
            "streaming_sample_size"
        )
    hint = (f"streaming takes the source classes from its first {len(sample)} rows: raise streaming_sample_size "
            "or shuffle the data so that every class appears among them")
    feature = (source.features or {}).get(d.label_column)
    # Declaring the output features keeps the columns known downstream (tokenisation need not peek at a row).
    features = datasets.Features({**source.features, "labels": Value("int64")}) if source.features else None
    source = source.map(_StreamLabels(d.label_column, feature, space, field="source_data", spec=d.source_data,
                                      hint=hint), batched=True, with_indices=True, features=features)

    target = target_sample = None
    if d.target_data:
        target = load_table(d.target_data, field="target_data", split=d.target_split, config=d.target_config,
                            streaming=True)
        if d.max_target_samples:
            target = target.take(d.max_target_samples)
        target_sample = take_rows(target, rows, field="target_data", spec=d.target_data)
        _check_input_columns(target_sample, d, task, field="target_data", spec=d.target_data, pairs=False)
    # Evaluation reads `eval_data` whole, or evaluates on the target sample (target labels never train).
    evaluation = _load_eval(d, target_sample, space, seed=seed, task=task)
    return RawData(source, target, evaluation, space, source_sample=sample, target_sample=target_sample)


class StreamingTrainSet(torch.utils.data.IterableDataset):
    """The training rows of a ``streaming: true`` run: an endless stream the Trainer reads ``max_steps`` batches from.

    ``source`` (and ``target``) are the one-pass streams :func:`prepare_data` builds (shuffled through a seeded
    buffer, then tokenised; then whatever the methods' ``prepare`` hooks mapped onto them). Pass ``p`` reads a fresh
    view of each with its epoch set to ``p``, which reseeds the shuffle buffer, so every pass has a new order that is
    a function of the recipe's ``seed`` alone. Being endless, the whole run is one Trainer "epoch" of ``max_steps``
    batches whatever the data's length: a resumed run skips exactly the batches already trained on and sees the same
    rows next. With a ``target`` stream (adaptation methods) each source row is paired with the next row of the
    endless target stream by :func:`pair_rows`, the row form of :func:`pair_with_target`: target inputs under the
    ``target_`` prefix, target labels never.

    Under several processes, Accelerate's ``IterableDatasetShard`` gives each process its own slice of every batch
    (``run.train`` turns batch dispatching off, since dynamically padded batches of different lengths cannot be
    concatenated for dispatch). DataLoader workers are refused by the recipe: ``datasets`` would split each stream's
    shards between them, and a side with fewer shards than workers would silently leave the other side's rows out.
    """

    def __init__(self, source: IterableDataset, target: IterableDataset | None = None, *, source_spec: str = "",
                 target_spec: str = ""):
        self.source, self.target = source, target
        self.source_spec, self.target_spec = source_spec, target_spec

    @staticmethod
    def _passes(stream: IterableDataset, field: str, spec: str) -> Iterator[dict[str, Any]]:
        import pyarrow as pa

        for p in itertools.count():
            # skip(0) is a new dataset over the same pipeline with its own epoch counter: setting the epoch on it
            # leaves the stream the run holds (and any sample read from it) at epoch 0.
            view = stream.skip(0)
            view.set_epoch(p)
            rows, empty = iter(view), True
            while True:
                # Only the read is guarded: the `yield` stays outside the `try`, so closing this generator (which
                # raises GeneratorExit there) never evaluates the except clause.
                try:
                    row = next(rows)
                except StopIteration:
                    break
                except pa.ArrowException as err:  # a value the reader cannot cast to the column's type
                    raise _unreadable(field, spec, err) from None
                empty = False
                yield row
            if empty:
                raise DataError(f"{field}: {spec!r} has no rows to train on (after max_*_samples and the held-out "
                                "source slice)")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows = self._passes(self.source, "source_data", self.source_spec)
        if self.target is not None:
            targets = self._passes(self.target, "target_data", self.target_spec)
            rows = (pair_rows(s, t) for s, t in zip(rows, targets))
        return rows
