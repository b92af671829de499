"""Which task each training step trains, and which rows: one task per batch, the same task on every process.

Under DDP every process must run the same forward graph at a step (the same task head, the same adapter), or the
gradient all-reduce would average one task's gradient with another's. So the task of each step comes from a
*schedule* that every process computes identically from the seed and the epoch, with no communication; each process
then takes its own, disjoint slice of that task's rows for the step (rank ``r`` takes rows ``r*B .. (r+1)*B - 1`` of
the step's ``world_size * B`` rows).

Strategies (``task_sampling`` in a recipe), with ``n_i`` the training rows of task ``i``:

* ``proportional``: ``p_i = n_i / sum_j n_j`` (as if the tasks' rows were pooled);
* ``temperature``:  ``p_i ∝ n_i ** (1 / T)`` (``T = 1`` is proportional, ``T -> inf`` uniform; multilingual BERT and
  T5 use it to lift small tasks);
* ``round_robin``: tasks in turn, ``0, 1, ..., K-1, 0, 1, ...`` (uniform over a cycle).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

SAMPLING_STRATEGIES = ("proportional", "temperature", "round_robin")


def task_probabilities(sizes: Sequence[int], strategy: str = "proportional", temperature: float = 1.0) -> np.ndarray:
    """The probability of drawing each task at a step (for ``round_robin``, its long-run share: uniform)."""
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or (n <= 0).any():
        raise ValueError(f"task sizes must be positive, got {list(sizes)}")
    if strategy == "proportional":
        weights = n
    elif strategy == "temperature":
        if temperature <= 0:
            raise ValueError(f"sampling_temperature must be > 0, got {temperature}")
        weights = n ** (1.0 / temperature)
    elif strategy == "round_robin":
        weights = np.ones_like(n)
    else:
        raise ValueError(f"unknown task sampling {strategy!r}; choose one of {', '.join(SAMPLING_STRATEGIES)}")
    return weights / weights.sum()


def task_schedule(
    sizes: Sequence[int],
    num_steps: int,
    *,
    strategy: str = "proportional",
    temperature: float = 1.0,
    seed: int = 0,
    epoch: int = 0,
) -> np.ndarray:
    """The task index of each of ``num_steps`` steps of one epoch: a pure function of its arguments, so every process
    computes the same schedule. ``round_robin`` continues across epochs (step ``epoch * num_steps + s`` trains task
    ``(epoch * num_steps + s) % K``); the random strategies draw i.i.d. from a generator seeded by
    ``(seed, epoch)``."""
    k = len(sizes)
    if strategy == "round_robin":
        task_probabilities(sizes, strategy)  # validates the sizes
        return (epoch * num_steps + np.arange(num_steps)) % k
    probs = task_probabilities(sizes, strategy, temperature)
    rng = np.random.default_rng([seed, epoch, 0x7A5C])
    return rng.choice(k, size=num_steps, p=probs)


class TaskBatchSampler:
    """A batch sampler over several tasks' rows laid end to end in one dataset (task ``i`` at rows
    ``offsets[i] .. offsets[i] + sizes[i] - 1``): every batch holds ``batch_size`` rows of one task.

    Args:
        sizes: rows per task.
        batch_size: rows per process per step.
        num_processes, process_index: the data-parallel world; this sampler yields only this process's batches.
        strategy, temperature: see :func:`task_schedule`.
        seed: shared by all processes.
        steps_per_epoch: steps in one pass; default ``sum_i ceil(n_i / (batch_size * num_processes))``, so an epoch
            sees about every row once under proportional sampling.
        task_ids: the global task id of each entry of ``sizes`` (default ``0..K-1``); reported by :meth:`schedule`.

    Rows of a task are visited in a fresh seeded permutation per epoch, continuing into another permutation when the
    task runs out within the epoch, so batches are always full. ``set_epoch`` (called by the Trainer) picks the epoch.
    """

    drop_last = False

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        strategy: str = "proportional",
        temperature: float = 1.0,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        task_ids: Sequence[int] | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} outside 0..{num_processes - 1}")
        self.sizes = [int(n) for n in sizes]
        task_probabilities(self.sizes, strategy, temperature)  # validate early
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.strategy = strategy
        self.temperature = temperature
        self.seed = seed
        global_batch = batch_size * num_processes
        self.steps_per_epoch = steps_per_epoch or sum(math.ceil(n / global_batch) for n in self.sizes)
        self.task_ids = list(task_ids) if task_ids is not None else list(range(len(self.sizes)))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def schedule(self, epoch: int | None = None) -> np.ndarray:
        """Global task id of every step of an epoch (the same on every process)."""
        local = task_schedule(
            self.sizes, self.steps_per_epoch, strategy=self.strategy, temperature=self.temperature, seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
        )
        return np.asarray(self.task_ids)[local]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        local = task_schedule(
            self.sizes, self.steps_per_epoch, strategy=self.strategy, temperature=self.temperature, seed=self.seed,
            epoch=epoch,
        )
        streams = [_RowStream(n, seed=self.seed, epoch=epoch, task=i) for i, n in enumerate(self.sizes)]
        global_batch = self.batch_size * self.num_processes
        lo, hi = self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size
        for task in local:
            rows = streams[task].take(global_batch)  # every process draws the same rows for the step ...
            yield (self.offsets[task] + rows[lo:hi]).tolist()  # ... and keeps its own slice


class _RowStream:
    """Rows ``0..n-1`` of one task in seeded permutations, one after another: each pass visits every row once."""

    def __init__(self, n: int, *, seed: int, epoch: int, task: int):
        self.n, self.seed, self.epoch, self.task = n, seed, epoch, task
        self.passes = 0
        self.buffer = np.empty(0, dtype=np.int64)

    def take(self, count: int) -> np.ndarray:
        while self.buffer.size < count:
            rng = np.random.default_rng([self.seed, self.epoch, self.task, self.passes])
            perm = rng.permutation(self.n)
            # Rows still waiting from the last pass go to the end of the new one, so a step that straddles two
            # passes holds no row twice (when the task has at least as many rows as the step).
            waiting = np.isin(perm, self.buffer)
            self.buffer = np.concatenate([self.buffer, perm[~waiting], perm[waiting]])
            self.passes += 1
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out
