"""Episodes: N-way K-shot support sets with query sets, drawn from tasks, seeded and reproducible.

A *task* is a pool of labelled rows: a domain (one file), a dataset, or a label subset of one (see
:func:`label_subset_tasks`). Episode ``i`` is a pure function of ``(seed, i)``: the sampler needs no state, two
samplers with the same seed give the same episodes in any order, and under data parallelism process ``r`` of ``W``
takes episodes ``(step * W + r) * E + i`` for ``i < E`` episodes per process (:meth:`EpisodeSampler.for_process`),
so processes never train on the same episode, none needs to talk to another to agree, and a step's episodes are
the same for any ``W`` with the same global count ``W * E``.

Per episode: pick a task (uniformly among those that can fill an episode), pick ``n_way`` of its classes, then for
each class ``k_shot`` support rows and ``n_query`` query rows, disjoint. Episode label ``j`` is the ``j``-th picked
class, so the class order (and the label permutation a meta-learner sees) changes from episode to episode.
A task may keep its query rows in a separate pool (``query_labels``): few-shot evaluation draws the K shots from a
target's training file and the query rows from its test file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

_SALT = 0xE915  # keeps episode streams apart from other seeded streams that share the recipe seed


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode. Row indices point into the task's tables (support pool, query pool).

    Attributes:
        index: the episode number it was drawn as.
        task: index of the task it was drawn from.
        classes: ``(n_way,)`` the task's class ids; episode label ``j`` means class ``classes[j]``.
        support, support_labels: ``(n_way * k_shot,)`` rows and episode labels, grouped by class.
        query, query_labels: ``(n_way * n_query,)`` rows and episode labels, grouped by class.
    """

    index: int
    task: int
    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    @property
    def n_way(self) -> int:
        return len(self.classes)


class EpisodeSampler:
    """Draw N-way K-shot episodes from one or more tasks.

    Args:
        labels: per task, the class id of each of its rows (the support pool).
        n_way: classes per episode; ``None`` uses every class of the task (all tasks then need the same count).
        k_shot: support rows per class.
        n_query: query rows per class.
        seed: episode ``i`` depends only on ``(seed, i)``.
        query_labels: per task, the class ids of a separate query pool; by default queries come from the support
            pool, disjoint from the episode's support rows.

    Raises:
        ValueError: when no task has ``n_way`` classes with enough rows; the message says what is short.
    """

    def __init__(
        self,
        labels: Sequence[Sequence[int]],
        *,
        n_way: int | None,
        k_shot: int,
        n_query: int,
        seed: int = 0,
        query_labels: Sequence[Sequence[int]] | None = None,
    ):
        if k_shot < 1 or n_query < 1:
            raise ValueError(f"k_shot and n_query must be >= 1, got {k_shot} and {n_query}")
        if n_way is not None and n_way < 2:
            raise ValueError(f"n_way must be >= 2, got {n_way}")
        if query_labels is not None and len(query_labels) != len(labels):
            raise ValueError(f"{len(query_labels)} query pools for {len(labels)} tasks")
        self.k_shot, self.n_query, self.n_way, self.seed = k_shot, n_query, n_way, seed
        self.separate_query = query_labels is not None
        self._rows: list[dict[int, np.ndarray]] = []  # task -> class -> support-pool rows
        self._qrows: list[dict[int, np.ndarray]] = []  # task -> class -> query-pool rows
        for t, task_labels in enumerate(labels):
            support = _rows_by_class(task_labels)
            query = _rows_by_class(query_labels[t]) if query_labels is not None else support
            self._rows.append(support)
            self._qrows.append(query)
        self.eligible_classes = [self._eligible(t) for t in range(len(labels))]
        self.tasks = [t for t, classes in enumerate(self.eligible_classes) if len(classes) >= self._way(t)]
        if not self.tasks:
            need = k_shot if self.separate_query else k_shot + n_query
            raise ValueError(
                f"no task can fill a {n_way or 'all'}-way episode: each needs that many classes with at least {need} "
                f"rows ({k_shot} shots{'' if self.separate_query else f' + {n_query} queries'}); lower k_shot/n_query"
                " or n_way, or give more rows"
            )
        if n_way is None and len({self._way(t) for t in self.tasks}) > 1:
            raise ValueError("n_way: the tasks have different numbers of classes; set n_way")

    def _way(self, task: int) -> int:
        return self.n_way if self.n_way is not None else len(self._rows[task])

    def _eligible(self, task: int) -> list[int]:
        support, query = self._rows[task], self._qrows[task]
        if self.separate_query:
            return [c for c in sorted(support)
                    if len(support[c]) >= self.k_shot and len(query.get(c, ())) >= self.n_query]
        return [c for c in sorted(support) if len(support[c]) >= self.k_shot + self.n_query]

    def episode(self, index: int) -> Episode:
        """Episode number ``index`` (any non-negative integer; the same episode every time)."""
        rng = np.random.default_rng([self.seed, int(index), _SALT])
        task = self.tasks[int(rng.integers(len(self.tasks)))]
        way = self._way(task)
        classes = rng.permutation(np.asarray(self.eligible_classes[task]))[:way]
        support, support_labels, query, query_labels = [], [], [], []
        for j, c in enumerate(classes):
            rows = rng.permutation(self._rows[task][int(c)])
            support.append(rows[: self.k_shot])
            if self.separate_query:
                query.append(rng.permutation(self._qrows[task][int(c)])[: self.n_query])
            else:
                query.append(rows[self.k_shot: self.k_shot + self.n_query])
            support_labels.append(np.full(self.k_shot, j))
            query_labels.append(np.full(self.n_query, j))
        return Episode(int(index), task, classes.astype(np.int64), np.concatenate(support).astype(np.int64),
                       np.concatenate(support_labels).astype(np.int64), np.concatenate(query).astype(np.int64),
                       np.concatenate(query_labels).astype(np.int64))

    def __iter__(self) -> Iterator[Episode]:
        index = 0
        while True:
            yield self.episode(index)
            index += 1

    def take(self, count: int, *, start: int = 0) -> list[Episode]:
        return [self.episode(i) for i in range(start, start + count)]

    def for_process(self, step: int, *, process_index: int = 0, num_processes: int = 1,
                    per_process: int = 1) -> list[Episode]:
        """The ``per_process`` episodes process ``process_index`` of ``num_processes`` trains at outer step ``step``.

        Episodes are numbered globally, ``num_processes * per_process`` a step, so one process with 2 a step trains
        on exactly the episodes two processes with 1 a step share between them."""
        first = (step * num_processes + process_index) * per_process
        return self.take(per_process, start=first)


def _rows_by_class(labels: Sequence[int]) -> dict[int, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError("labels must be one class id per row")
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def label_subset_tasks(labels: Sequence[int],
                       groups: Sequence[Sequence[int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split one labelled table into tasks by label subsets (e.g. classes 0-4 meta-train, 5-9 meta-test).

    Returns, per group, the table rows of its classes and their labels (the original class ids), ready for
    :class:`EpisodeSampler` (``labels=``) with the rows mapping episode rows back to the table.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rows, task_labels = [], []
    for group in groups:
        mask = np.isin(labels, np.asarray(list(group), dtype=np.int64))
        rows.append(np.flatnonzero(mask))
        task_labels.append(labels[mask])
    return rows, task_labels
