"""Load, check and tokenise every task of a multi-task recipe; lay the tasks' rows end to end; collate.

All checks run before a model is loaded, and fail with a one-line :class:`~hf_transfer.errors.DataError` that names
``tasks[i].field`` and the file. The loading code is the single-task one (:mod:`hf_transfer.data`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets

from ..data import MODEL_INPUT_KEYS, TARGET_PREFIX, TransferCollator, accuracy_metrics, pair_with_target
from ..tasklists.data import TASK_ID_COLUMN, TaskData, load_tasks, tokenize_tasks  # noqa: F401  (also named here)


def concatenate_tasks(tasks: list[TaskData]) -> Dataset:
    """The training rows of ``tasks``, task after task (the layout :class:`TaskBatchSampler` expects)."""
    return concatenate_datasets([t.train for t in tasks])


def pair_tasks_with_targets(tasks: list[TaskData], *, seed: int) -> None:
    """Pair each task's training rows with its own unlabelled target rows, in place (tasks without a target stay
    as they are): the flat path's :func:`~hf_transfer.data.pair_with_target`, one task at a time, so that every
    paired row holds a source row and a target row of the same task."""
    for task in tasks:
        if task.target is not None:
            task.train = pair_with_target(task.train, task.target, seed=seed)


class MultiTaskCollator:
    """Pad a batch and add ``task_ids``; labels are ``long`` unless the batch has a regression task's rows.

    Rows paired with target rows (:func:`pair_tasks_with_targets`) are collated by the flat path's
    :class:`~hf_transfer.data.TransferCollator`: the task's labelled rows, then its target rows (``labels`` -100,
    ``domain`` 0 / 1); each target row takes the task of the row it was paired with."""

    def __init__(self, tokenizer, *, regression_tasks: Collection[int] = (), pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.regression_tasks = set(regression_tasks)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.paired = TransferCollator(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if TARGET_PREFIX + "input_ids" in rows[0]:
            batch = self.paired(rows)
            ids = [int(r[TASK_ID_COLUMN]) for r in rows]
            ids += [i for i, r in zip(ids, rows) if TARGET_PREFIX + "input_ids" in r]
            batch[TASK_ID_COLUMN] = torch.tensor(ids, dtype=torch.long)
            return batch
        features = [{k: r[k] for k in MODEL_INPUT_KEYS if k in r} for r in rows]
        batch = dict(self.tokenizer.pad(features, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                        return_tensors="pt"))
        task_ids = torch.tensor([int(r[TASK_ID_COLUMN]) for r in rows], dtype=torch.long)
        batch[TASK_ID_COLUMN] = task_ids
        if "labels" in rows[0]:
            regression = bool(self.regression_tasks.intersection(task_ids.tolist()))
            values = [r["labels"] for r in rows]
            batch["labels"] = torch.tensor(values, dtype=torch.float32 if regression else torch.long)
        return batch


def regression_metrics(eval_pred) -> dict[str, float]:
    """Mean squared error and Pearson correlation of a one-output head."""
    preds = np.asarray(eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple)
                       else eval_pred.predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1)
    mse = float(np.mean((preds - labels) ** 2)) if labels.size else float("nan")
    pearson = float(np.corrcoef(preds, labels)[0, 1]) if labels.size > 1 and preds.std() > 0 and labels.std() > 0 \
        else float("nan")
    return {"mse": mse, "pearson": pearson}


def task_metrics(problem_type: str):
    """The ``compute_metrics`` function of a task."""
    return regression_metrics if problem_type == "regression" else accuracy_metrics
