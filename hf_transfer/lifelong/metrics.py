"""Continual-learning metrics from an accuracy matrix, and its plot.

``R[i, j]`` is the accuracy on task ``j`` after training on tasks ``0..i`` in order (``NaN`` where not measured,
e.g. tasks not seen yet). After step ``i``:

* average accuracy ``A_i = mean_{j <= i} R[i, j]``;
* forgetting ``F_i = mean_{j < i} (max_{j <= l < i} R[l, j] - R[i, j])``: how far each earlier task fell below its
  best accuracy since it was learned (Chaudhry et al., ECCV 2018), 0 after the first task;
* backward transfer ``BWT = mean_{j < T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato, NeurIPS 2017): negative
  when learning later tasks hurts earlier ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _matrix(matrix) -> np.ndarray:
    r = np.asarray(matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] > r.shape[1]:
        raise ValueError(f"accuracy matrix: expected (steps, tasks) with steps <= tasks, got shape {r.shape}")
    return r


def average_accuracy(matrix, step: int | None = None) -> float:
    """``A_i``: mean accuracy over the tasks seen so far, after step ``i`` (default: the last)."""
    r = _matrix(matrix)
    i = r.shape[0] - 1 if step is None else step
    return float(np.mean(r[i, : i + 1]))


def forgetting(matrix, step: int | None = None) -> float:
    """``F_i``: mean drop of each earlier task from its best accuracy since it was learned (0 at step 0)."""
    r = _matrix(matrix)
    i = r.shape[0] - 1 if step is None else step
    if i == 0:
        return 0.0
    return float(np.mean([np.max(r[j:i, j]) - r[i, j] for j in range(i)]))


def backward_transfer(matrix) -> float:
    """``BWT``: mean change of each earlier task's accuracy from just after learning it to the end."""
    r = _matrix(matrix)
    last = r.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean([r[last, j] - r[j, j] for j in range(last)]))


def summarize(matrix) -> dict[str, float | list[float]]:
    """Average accuracy and forgetting after every step, and the final ones with backward transfer."""
    r = _matrix(matrix)
    steps = range(r.shape[0])
    avg = [average_accuracy(r, i) for i in steps]
    forg = [forgetting(r, i) for i in steps]
    return {"average_accuracy": avg[-1], "forgetting": forg[-1], "backward_transfer": backward_transfer(r),
            "average_accuracy_per_step": avg, "forgetting_per_step": forg}


def plot_accuracy_matrix(matrix, task_names: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Write the accuracy matrix as a PNG heat map (rows: after training on task i; columns: evaluated on task j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = _matrix(matrix)
    steps, tasks = r.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * tasks, 0.8 + 0.6 * steps))
    image = ax.imshow(np.ma.masked_invalid(r), vmin=0.5 if np.nanmin(r) >= 0.5 else 0.0, vmax=1.0, cmap="viridis")
    for i in range(steps):
        for j in range(tasks):
            if np.isfinite(r[i, j]):
                ax.text(j, i, f"{r[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if r[i, j] < 0.8 else "black")
    ax.set_xticks(range(tasks), [str(n) for n in task_names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(steps), [f"after {n}" for n in task_names[:steps]], fontsize=8)
    ax.set_xlabel("evaluated on")
    summary = summarize(r)
    ax.set_title(f"{title} A={summary['average_accuracy']:.3f} F={summary['forgetting']:.3f}".strip(), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
