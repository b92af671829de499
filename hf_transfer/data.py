"""Load source / target / evaluation data, check it against the recipe, tokenise it, pair it, collate it.

Every dataset goes through ``datasets.load_dataset`` (files, folders and Hub ids alike), so tokenisation is cached
by fingerprint. All checks happen here, before a model is loaded or a step is taken, and fail with a
:class:`~hf_transfer.errors.DataError` that names the recipe field, the file and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, Value, concatenate_datasets

from .errors import DataError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
# Columns that carry a model input: token ids for text; the (undecoded) image before collation and the processed
# pixels after it for images (see hf_transfer/vision/data.py).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "image", "pixel_values")
TARGET_PREFIX = "target_"


def _looks_like_path(spec: str) -> bool:
    suffix = Path(spec).suffix.lower()
    return spec.startswith((".", "/", "~")) or suffix in FILE_BUILDERS or suffix == ".npz" or os.sep + os.sep in spec


def load_table(spec: str, *, field: str, split: str = "train", config: str | None = None) -> Dataset:
    """Load one table from a file, a folder or a Hub dataset id.

    Args:
        spec: path to a ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file, a folder ``load_dataset``
            understands (an ``imagefolder`` of class sub-folders included), a NumPy ``.npz`` of images, or a Hub
            dataset id.
        field: the recipe field the spec came from, for error messages (``"source_data"``).
        split, config: Hub / folder split and configuration. For a ``.npz`` file, ``config`` is the key prefix
            (``mnist`` reads ``mnist_x`` / ``mnist_y``; none reads ``x`` / ``y``); see
            :func:`hf_transfer.vision.data.load_npz`.
    """
    path = Path(os.path.expanduser(spec))
    try:
        if path.is_file() and path.suffix.lower() == ".npz":
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
            table = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        elif path.is_dir():
            table = datasets.load_dataset(str(path), config, split=split)
        elif _looks_like_path(spec):
            raise DataError(f"{field}: file {spec!r} does not exist; check the path (relative to {os.getcwd()})")
        else:
            table = datasets.load_dataset(spec, config, split=split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (DatasetNotFoundError, ConnectionError, ArrowInvalid ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (the Hub is offline: point it at a local file or folder)" if offline else ""
        raise DataError(f"{field}: cannot read {spec!r}: {first_line}{hint}") from None
    if isinstance(table, datasets.DatasetDict):
        raise DataError(f"{field}: {spec!r} has several splits; choose one with {field.replace('_data', '_split')}")
    if len(table) == 0:
        raise DataError(f"{field}: {spec!r} has no rows")
    return table


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


def infer_label_space(table: Dataset, column: str, *, num_labels: int | None, field: str, spec: str) -> LabelSpace:
    """Work out the classes from the source labels (or the given ``num_labels``)."""
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
        names = sorted(set(values))
        if num_labels is not None and num_labels != len(names):
            raise DataError(f"num_labels: {num_labels} given but {field} ({spec!r}) has {len(names)} label names")
        return LabelSpace(names, from_strings=True)
    ids = _as_int_labels(values, field=field, spec=spec)
    count = num_labels if num_labels is not None else max(2, int(ids.max()) + 1)
    _check_range(ids, count, field=field, spec=spec)
    return LabelSpace([str(i) for i in range(count)])


def _as_int_labels(values: list[Any], *, field: str, spec: str) -> np.ndarray:
    for row, value in enumerate(values):
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        ok = ok or (isinstance(value, float) and float(value).is_integer())
        if not ok:
            raise DataError(
                f"label_column: {field} ({spec!r}) row {row} has label {value!r}; labels must be integer class ids "
                "or class-name strings"
            )
    return np.asarray(values, dtype=np.int64)


def _check_range(ids: np.ndarray, num_labels: int, *, field: str, spec: str) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= num_labels))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"label_column: {field} ({spec!r}) row {row} has label {int(ids[row])}, outside 0..{num_labels - 1} "
            f"(num_labels={num_labels}); fix the data or set num_labels"
        )


def encode_labels(table: Dataset, column: str, space: LabelSpace, *, field: str, spec: str) -> Dataset:
    """Add an int64 ``labels`` column in the label space (names mapped to ids), checking every value."""
    feature = table.features[column]
    values = table[column]
    if isinstance(feature, ClassLabel):
        names = feature.names
        if names != space.names:
            raise DataError(
                f"label_column: {field} ({spec!r}) classes {names} differ from the source classes {space.names}"
            )
        ids = np.asarray(values, dtype=np.int64)
    elif space.from_strings:
        index = {name: i for i, name in enumerate(space.names)}
        unknown = sorted({str(v) for v in values if v not in index})
        if unknown:
            raise DataError(
                f"label_column: {field} ({spec!r}) has labels {unknown[:5]} that the source does not have "
                f"(source labels: {space.names}); source and target must share one label set"
            )
        ids = np.asarray([index[v] for v in values], dtype=np.int64)
    else:
        if any(v is None for v in values):
            row = next(i for i, v in enumerate(values) if v is None)
            raise DataError(f"label_column: {field} ({spec!r}) row {row} has no label")
        ids = _as_int_labels(values, field=field, spec=spec)
        _check_range(ids, space.num_labels, field=field, spec=spec)
    if "labels" in table.column_names and column != "labels":
        table = table.remove_columns("labels")
    if column == "labels":
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

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [t if isinstance(t, str) else "" for t in batch[text_column]]
        pairs = None
        if text_pair_column:
            pairs = [t if isinstance(t, str) else "" for t in batch[text_pair_column]]
        out = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    drop = [c for c in table.column_names if c not in keep]
    return table.map(encode, batched=True, remove_columns=drop, desc=desc)


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
    tgt = tgt.remove_columns([c for c in tgt.column_names if c not in MODEL_INPUT_KEYS and c != "length"])
    tgt = tgt.rename_columns({c: TARGET_PREFIX + c for c in tgt.column_names})
    paired = concatenate_datasets([src.flatten_indices(), tgt.flatten_indices()], axis=1)
    if "length" not in paired.column_names:  # image rows have no length
        return paired
    lengths = np.maximum(np.asarray(paired["length"]), np.asarray(paired[TARGET_PREFIX + "length"]))
    paired = paired.remove_columns(["length", TARGET_PREFIX + "length"])
    return paired.add_column("length", lengths.tolist())


def add_batch_labels(batch: dict[str, Any], rows: list[dict[str, Any]], *, num_target: int) -> dict[str, Any]:
    """Add ``labels`` (target rows -100), ``domain`` (0 source, 1 target; only when there are target rows) and
    ``sample_weight`` (target rows 0) to a batch whose inputs hold the ``rows`` first, then ``num_target`` target
    rows."""
    if "labels" in rows[0]:
        batch["labels"] = torch.tensor([r["labels"] for r in rows] + [-100] * num_target, dtype=torch.long)
    if num_target:
        batch["domain"] = torch.tensor([0] * len(rows) + [1] * num_target, dtype=torch.long)
    if "sample_weight" in rows[0]:
        weights = [float(r["sample_weight"]) for r in rows] + [0.0] * num_target
        batch["sample_weight"] = torch.tensor(weights, dtype=torch.float32)
    return batch


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
    """Accuracy and macro-F1 from a ``transformers.EvalPrediction`` (numpy; no Hub metric needed)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    preds = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    keep = labels != -100
    preds, labels = preds[keep], labels[keep]
    accuracy = float((preds == labels).mean()) if labels.size else float("nan")
    f1s = []
    for c in np.unique(np.concatenate([labels, preds])):
        tp = np.sum((preds == c) & (labels == c))
        denom = np.sum(preds == c) + np.sum(labels == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1s)) if f1s else float("nan")}


@dataclass
class RawData:
    """The recipe's tables, loaded and checked, with labels encoded; nothing tokenised yet."""

    source: Dataset
    target: Dataset | None
    eval: Dataset | None
    labels: LabelSpace


def load_raw_data(data_args, *, num_labels: int | None = None, seed: int = 42) -> RawData:
    """Load and validate every table a recipe names. Cheap enough to run before the model is loaded."""
    d = data_args
    # Images: `image_column` replaces `text_column` everywhere, and every image is decoded once to fail early.
    input_column, input_option = (d.image_column, "image_column") if d.image_column else (d.text_column, "text_column")
    source = load_table(d.source_data, field="source_data", split=d.source_split, config=d.source_config)
    require_column(source, input_column, field="source_data", spec=d.source_data, option=input_option)
    if d.text_pair_column:
        require_column(source, d.text_pair_column, field="source_data", spec=d.source_data, option="text_pair_column")
    require_column(source, d.label_column, field="source_data", spec=d.source_data, option="label_column")
    if d.max_source_samples:
        source = source.shuffle(seed=seed).select(range(min(d.max_source_samples, len(source))))
    space = infer_label_space(source, d.label_column, num_labels=num_labels, field="source_data", spec=d.source_data)
    if d.class_names:
        if space.from_strings:
            raise DataError("class_names: the source labels are already names; remove class_names")
        if len(d.class_names) != space.num_labels:
            raise DataError(
                f"class_names: {len(d.class_names)} names given for {space.num_labels} classes in source_data"
            )
        space = LabelSpace(list(d.class_names))
    source = encode_labels(source, d.label_column, space, field="source_data", spec=d.source_data)
    if len(set(source["labels"])) < 2:
        raise DataError(
            f"label_column: source_data ({d.source_data!r}) has a single class; training needs two or more"
        )

    target = None
    if d.target_data:
        target = load_table(d.target_data, field="target_data", split=d.target_split, config=d.target_config)
        require_column(target, input_column, field="target_data", spec=d.target_data, option=input_option)
        if d.max_target_samples:
            target = target.shuffle(seed=seed).select(range(min(d.max_target_samples, len(target))))

    evaluation = None
    if d.eval_data:
        evaluation = load_table(d.eval_data, field="eval_data", split=d.eval_split, config=d.eval_config)
        require_column(evaluation, input_column, field="eval_data", spec=d.eval_data, option=input_option)
        require_column(evaluation, d.label_column, field="eval_data", spec=d.eval_data, option="label_column")
        evaluation = encode_labels(evaluation, d.label_column, space, field="eval_data", spec=d.eval_data)
    elif target is not None and d.label_column in target.column_names:
        # The target's own labels evaluate it; training only ever sees the target's texts.
        evaluation = encode_labels(target, d.label_column, space, field="target_data", spec=d.target_data)
    if evaluation is not None and d.max_eval_samples:
        evaluation = evaluation.shuffle(seed=seed).select(range(min(d.max_eval_samples, len(evaluation))))
    if d.image_column:
        from .vision.data import check_images

        tables = {"source_data": (source, d.source_data), "target_data": (target, d.target_data),
                  "eval_data": (evaluation, d.eval_data)}
        for field, (table, spec) in tables.items():
            if table is not None and (field != "eval_data" or d.eval_data):
                check_images(table, d.image_column, field=field, spec=spec)
    return RawData(source, target, evaluation, space)


@dataclass
class PreparedData:
    """Tokenised tables ready for the Trainer."""

    train: Dataset
    source_eval: Dataset | None
    target_eval: Dataset | None
    target: Dataset | None
    labels: LabelSpace


def prepare_data(raw: RawData, tokenizer, data_args, *, seed: int = 42) -> PreparedData:
    """Tokenise (text; image tables are only narrowed to their image column, see
    :func:`hf_transfer.vision.data.select_image_column`) and hold out a source slice for ``source_accuracy``. Pairing
    with target rows (:func:`pair_with_target`) comes later, after any method has changed the source rows (e.g.
    weighted them)."""
    d = data_args
    if d.image_column:  # images stay undecoded here; the collator runs the image processor per batch
        from .vision.data import select_image_column

        def process(table: Dataset, keep: tuple[str, ...] = ("labels",), desc: str = "") -> Dataset:
            return select_image_column(table, d.image_column, keep=keep)
    else:
        def process(table: Dataset, keep: tuple[str, ...] = ("labels",), desc: str = "Tokenizing") -> Dataset:
            return tokenize(table, tokenizer, text_column=d.text_column, text_pair_column=d.text_pair_column,
                            max_length=d.max_length, keep=keep, desc=desc)
    source = process(raw.source, desc="Tokenizing source")
    source_eval = None
    if d.source_eval_fraction > 0 and len(source) >= 10:
        split = source.train_test_split(test_size=d.source_eval_fraction, seed=seed)
        source, source_eval = split["train"], split["test"]
    target = process(raw.target, keep=(), desc="Tokenizing target") if raw.target is not None else None
    target_eval = process(raw.eval, desc="Tokenizing eval") if raw.eval is not None else None
    return PreparedData(source, source_eval, target_eval, target, raw.labels)
