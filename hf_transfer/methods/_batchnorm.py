"""Batch-norm helpers shared by ``adabn`` and ``dsbn``: find a model's batch-norm layers, run them another way for a
while (an instance-level ``forward`` that is removed again, so the exported model is the plain architecture), and
compute each layer's exact input statistics over many batches.

The running statistics a batch-norm layer stores are ordinary buffers (``running_mean``, ``running_var``), so a model
whose statistics were re-estimated on the target domain is still a plain ``transformers`` model: nothing here is
saved, exported or needed at inference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from ..batching import MODEL_INPUT_KEYS
from ..errors import RecipeError

BatchNorm = nn.modules.batchnorm._BatchNorm


def batch_norm_layers(model: nn.Module) -> list[tuple[str, BatchNorm]]:
    """``(name, layer)`` of every batch-norm layer (any dimension, SyncBatchNorm included) that keeps running
    statistics; layers built with ``track_running_stats=False`` always normalise with the batch's and are left out."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, BatchNorm) and m.track_running_stats and m.running_mean is not None]


def require_batch_norm(name: str, model: nn.Module) -> list[tuple[str, BatchNorm]]:
    layers = batch_norm_layers(model)
    if not layers:
        raise RecipeError(
            f"method: {name} adapts batch-norm statistics, but {type(model).__name__} has no batch-norm layer with "
            f"running statistics (transformers and ViTs use layer norm); remove {name} from method"
        )
    return layers


def context_callbacks(name: str, context: dict[str, Any]) -> list:
    """The run's TrainerCallback list a ``prepare`` hook may append to (absent in families that run no Trainer)."""
    callbacks = context.get("callbacks")
    if callbacks is None:
        raise RecipeError(f"method: {name} runs at the end of training, which this family's training does not offer; "
                          f"remove {name} from method")
    return callbacks


def replace_forward(layer: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Run ``forward(x)`` instead of the layer's own until :func:`restore_forward` (an instance attribute shadows the
    class's method: the state dict, the class and the saved config are untouched)."""
    layer.forward = forward


def restore_forward(layer: nn.Module) -> None:
    layer.__dict__.pop("forward", None)


class ExactStatistics:
    """While active, every listed layer normalises with its batch's statistics (as in training mode, whatever the
    module's mode) without touching its running buffers, and adds its input's per-channel sum, sum of squares and
    element count (in float64) to a total. :meth:`write` then stores, in each layer's buffers, the mean and the
    unbiased variance (what ``BatchNorm`` keeps in ``running_var``) of all the inputs it saw.

    Used as ``with ExactStatistics(layers) as stats: <forward passes>; stats.write()``.
    """

    def __init__(self, layers: list[tuple[str, BatchNorm]]):
        self.layers = layers
        self.sums: dict[str, list] = {}

    def __enter__(self) -> ExactStatistics:
        for name, layer in self.layers:
            self.sums[name] = [0.0, 0.0, 0]
            replace_forward(layer, self._forward(name, layer))
        return self

    def __exit__(self, *exc) -> None:
        for _, layer in self.layers:
            restore_forward(layer)

    def _forward(self, name: str, layer: BatchNorm):
        def forward(x: torch.Tensor) -> torch.Tensor:
            dims = [0, *range(2, x.dim())]  # every axis but the channels
            xd = x.detach().double()
            total = self.sums[name]
            total[0] = total[0] + xd.sum(dims)
            total[1] = total[1] + (xd * xd).sum(dims)
            total[2] += x.numel() // x.shape[1]
            return F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)

        return forward

    def write(self) -> int:
        """Store the statistics in the layers' buffers; returns the number of layers written."""
        written = 0
        for name, layer in self.layers:
            s1, s2, n = self.sums[name]
            if n < 2:
                continue
            mean = s1 / n
            var = (s2 - n * mean * mean).clamp_min(0.0) / (n - 1)
            with torch.no_grad():
                layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
                layer.running_var.copy_(var.to(layer.running_var.dtype))
                if layer.num_batches_tracked is not None:
                    layer.num_batches_tracked.fill_(1)  # one estimate, over all rows
            written += 1
        return written


def row_chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``n`` rows in ``ceil(n / batch_size)`` near-equal chunks: never a last chunk
    of one row, which a batch-norm layer over vectors cannot normalise."""
    count = max(1, -(-n // batch_size))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def model_inputs(batch: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """The model-input tensors of a collated batch, on the model's device (floats in its dtype)."""
    param = next(model.parameters())
    out = {}
    for key, value in batch.items():
        if key in MODEL_INPUT_KEYS and torch.is_tensor(value):
            value = value.to(param.device)
            out[key] = value.to(param.dtype) if value.is_floating_point() else value
    return out


class RunAtTrainEnd(TrainerCallback):
    """Calls ``fn(model)`` once training ends (after ``load_best_model_at_end`` has loaded the best checkpoint and
    before the run's final evaluation and export)."""

    def __init__(self, fn: Callable[[nn.Module], None]):
        self.fn = fn

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.fn(model)
