"""The supervised losses of a training step, shared by the trainer (:mod:`hf_transfer.trainer`) and the tasks
(:mod:`hf_transfer.tasks`), with the global-batch normalisation of :mod:`hf_transfer.distributed`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import global_mean_scale

#: the label of a row that has none (a target row, an unlabelled row), as transformers' losses ignore it
IGNORE_INDEX = -100


def single_label_rows(labels: torch.Tensor) -> torch.Tensor:
    """Which rows of a single-label batch carry a label: ``(B,)`` booleans."""
    return labels != IGNORE_INDEX


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None, *, global_batch: bool = False
) -> torch.Tensor:
    """Mean cross-entropy over the rows not labelled -100, or the weight-normalised mean ``sum(w_i * ce_i) / sum(w_i)``
    when weights are given (rows labelled -100 must then weigh 0).

    ``global_batch``: under data parallelism, return this process's share of the mean over *all* processes' rows
    (normalised by the global row count or weight total), so that DDP's gradient average is exactly the gradient of
    the global mean whatever the shard sizes (see :mod:`hf_transfer.distributed`). Every process must call it.
    """
    losses = F.cross_entropy(logits, labels, reduction="none")  # 0 on rows labelled -100
    weights = (labels != -100).to(losses.dtype) if weights is None else weights.to(losses.dtype)
    total = (losses * weights).sum()  # 0, still attached to the graph, on a batch without labelled rows
    if global_batch:
        return total * global_mean_scale(weights.sum())
    return total / weights.sum().clamp_min(1e-12)
