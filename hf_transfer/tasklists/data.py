"""Load, check and tokenise every task of a recipe made of task lists (multi-task, meta-learning, lifelong).

All checks run before a model is loaded, and fail with a one-line :class:`~hf_transfer.errors.DataError` that names
``tasks[i].field`` and the file. The loading code is the single-task one (:mod:`hf_transfer.data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import Dataset, Value

from ..data import LabelSpace, encode_labels, infer_label_space, load_table, progress_bars, require_column, tokenize
from ..errors import DataError
from .recipe import TaskSpec

TASK_ID_COLUMN = "task_ids"


@dataclass
class TaskData:
    """One task's tables (labels encoded in a ``labels`` column; tokenised by :func:`tokenize_tasks`)."""

    spec: TaskSpec
    labels: LabelSpace | None  # None for regression
    train: Dataset
    eval: Dataset
    #: unlabelled target rows (text columns only; ``tasks[i].target_data``), or ``None``
    target: Dataset | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else self.labels.num_labels

    def model_task(self) -> dict[str, Any]:
        """The task entry of :class:`~hf_transfer.multitask.MultiTaskConfig`."""
        return {"name": self.name, "num_labels": self.num_labels, "problem_type": self.spec.problem_type,
                "id2label": None if self.labels is None else self.labels.id2label,
                "loss_weight": self.spec.loss_weight}


def _retag(err: DataError, where: str) -> DataError:
    """Single-task messages start with the field (``label_column: ...``); name the task's field instead."""
    message = str(err)
    for name in ("label_column", "num_labels", "class_names", "text_column", "text_pair_column"):
        if message.startswith(f"{name}:"):
            return DataError(f"{where}.{message}")
    return err


def load_tasks(tasks: list[TaskSpec], *, seed: int = 42) -> list[TaskData]:
    """Load and check every task's training and evaluation rows (nothing tokenised yet)."""
    return [_load_task(spec, i, seed=seed) for i, spec in enumerate(tasks)]


def _load_task(spec: TaskSpec, i: int, *, seed: int) -> TaskData:
    where = f"tasks[{i}]"
    data_field = f"{where}.data"
    table = load_table(spec.data, field=data_field, split=spec.split, config=spec.config)
    columns = [("text_column", spec.text_column), ("label_column", spec.label_column)]
    if spec.text_pair_column:
        columns.append(("text_pair_column", spec.text_pair_column))
    for option, column in columns:
        require_column(table, column, field=data_field, spec=spec.data, option=f"{where}.{option}")
    if spec.max_train_samples:
        table = table.shuffle(seed=seed).select(range(min(spec.max_train_samples, len(table))))
    try:
        if spec.problem_type == "regression":
            space = None
            table = _encode_regression(table, spec.label_column, field=data_field, spec=spec.data)
        else:
            space = infer_label_space(table, spec.label_column, num_labels=spec.num_labels, field=data_field,
                                      spec=spec.data)
            if spec.class_names:
                if space.from_strings:
                    raise DataError("class_names: the labels are already names; remove class_names")
                if len(spec.class_names) != space.num_labels:
                    raise DataError(f"class_names: {len(spec.class_names)} names given for {space.num_labels} "
                                    f"classes in {data_field}")
                space = LabelSpace(list(spec.class_names))
            table = encode_labels(table, spec.label_column, space, field=data_field, spec=spec.data)
            if len(set(table["labels"])) < 2:
                raise DataError(f"label_column: {data_field} ({spec.data!r}) has a single class; a task needs two "
                                "or more")
        if spec.eval_data:
            eval_field = f"{where}.eval_data"
            evaluation = load_table(spec.eval_data, field=eval_field, split=spec.eval_split, config=spec.eval_config)
            for option, column in columns:
                require_column(evaluation, column, field=eval_field, spec=spec.eval_data, option=f"{where}.{option}")
            if space is None:
                evaluation = _encode_regression(evaluation, spec.label_column, field=eval_field, spec=spec.eval_data)
            else:
                evaluation = encode_labels(evaluation, spec.label_column, space, field=eval_field,
                                           spec=spec.eval_data)
        else:
            if len(table) < 4:
                raise DataError(f"{where}.eval_data: {data_field} has {len(table)} rows, too few to hold out "
                                "evaluation rows; give eval_data")
            split = table.train_test_split(test_size=spec.eval_fraction, seed=seed)
            table, evaluation = split["train"], split["test"]
    except DataError as err:
        raise _retag(err, where) from None
    if spec.max_eval_samples:
        evaluation = evaluation.shuffle(seed=seed).select(range(min(spec.max_eval_samples, len(evaluation))))
    return TaskData(spec, space, table, evaluation, _load_target(spec, where, columns[:1] + columns[2:], seed=seed))


def _load_target(spec: TaskSpec, where: str, columns: list[tuple[str, str]], *, seed: int) -> Dataset | None:
    """The task's unlabelled target rows: its text column(s) only, so that no target label can reach a loss."""
    if not spec.target_data:
        return None
    target_field = f"{where}.target_data"
    table = load_table(spec.target_data, field=target_field, split=spec.target_split, config=spec.target_config)
    for option, column in columns:
        require_column(table, column, field=target_field, spec=spec.target_data, option=f"{where}.{option}")
    if len(table) == 0:
        raise DataError(f"{target_field}: {spec.target_data!r} has no rows")
    if spec.max_target_samples:
        table = table.shuffle(seed=seed).select(range(min(spec.max_target_samples, len(table))))
    keep = [column for _, column in columns]
    return table.remove_columns([c for c in table.column_names if c not in keep])


def _encode_regression(table: Dataset, column: str, *, field: str, spec: str) -> Dataset:
    values = table[column]
    for row, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise DataError(f"label_column: {field} ({spec!r}) row {row} has label {value!r}; a regression task "
                            "needs numbers")
    if "labels" in table.column_names:
        table = table.remove_columns("labels")
    return table.add_column("labels", [float(v) for v in values])


def tokenize_tasks(tasks: list[TaskData], tokenizer, *, max_length: int, task_ids: list[int],
                   progress: bool = True) -> None:
    """Tokenise each task's tables in place, adding a ``task_ids`` column (the task's index in the model) and
    float ``labels`` (so that classification and regression tasks concatenate into one table). ``progress``: show
    the ``Tokenizing ...`` bars (a run passes ``not disable_tqdm``)."""
    with progress_bars(progress):
        _tokenize_tasks(tasks, tokenizer, max_length=max_length, task_ids=task_ids)


def _tokenize_tasks(tasks: list[TaskData], tokenizer, *, max_length: int, task_ids: list[int]) -> None:
    for task, task_id in zip(tasks, task_ids):
        spec = task.spec
        tok = dict(tokenizer=tokenizer, text_column=spec.text_column, text_pair_column=spec.text_pair_column,
                   max_length=max_length)
        for attr in ("train", "eval"):
            table = tokenize(getattr(task, attr), **tok, desc=f"Tokenizing {spec.name} {attr}")
            table = table.cast_column("labels", Value("float64"))
            table = table.add_column(TASK_ID_COLUMN, [task_id] * len(table))
            setattr(task, attr, table)
        if task.target is not None:
            task.target = tokenize(task.target, **tok, keep=(), desc=f"Tokenizing {spec.name} target")
