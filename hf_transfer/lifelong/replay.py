"""A small replay buffer: a few rows of every earlier task, mixed into the training data of the next ones."""

from __future__ import annotations

from typing import Any

import numpy as np


class ReplayBuffer:
    """At most ``capacity`` rows, shared equally by the tasks seen so far.

    Each task's rows are kept in a seeded random order; when a new task arrives, every task keeps the first
    ``capacity // tasks`` of its order, so older tasks give up rows (never swap them) and the buffer is the same for
    the same seed. Rows are stored as given (tokenised dicts).
    """

    def __init__(self, capacity: int, *, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay_size must be >= 1, got {capacity}")
        self.capacity, self.seed = capacity, seed
        self._tasks: dict[str, list[dict[str, Any]]] = {}

    def add_task(self, name: str, rows: list[dict[str, Any]]) -> None:
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already in the replay buffer")
        order = np.random.default_rng([self.seed, len(self._tasks), 0x5EED]).permutation(len(rows))
        self._tasks[name] = [rows[i] for i in order]
        share = self.per_task
        for task in self._tasks:
            self._tasks[task] = self._tasks[task][:share]

    @property
    def per_task(self) -> int:
        return max(1, self.capacity // max(1, len(self._tasks)))

    def rows(self) -> list[dict[str, Any]]:
        return [row for rows in self._tasks.values() for row in rows]

    def counts(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self._tasks.items()}

    def __len__(self) -> int:
        return sum(len(r) for r in self._tasks.values())
