"""The before/after picture every training run with a target writes: t-SNE of source vs target features from the
pretrained backbone (before) and from the trained one (after), as ``diagnostics_tsne.png`` beside the model.

Cheap by construction: a seeded sample of at most ``tsne_rows`` rows per domain (a recipe field, default 100; the
first rows of a streamed domain), one frozen forward pass over them before training and one after, two short t-SNEs
(500 iterations) of a few hundred points, on the main process only: a second or two on a CPU.
The recipe field ``tsne_plot: false`` turns it off (recorded in ``recipe.yaml``); the older environment switch
``HF_TRANSFER_TSNE_PLOT=0`` is still honoured as an off switch (deprecated; the test suite uses it).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

from ..distributed import parameters_sharded

PLOT_NAME = "diagnostics_tsne.png"
ENABLE_ENV = "HF_TRANSFER_TSNE_PLOT"  # deprecated off switch; the recipe field `tsne_plot` is the setting
DEFAULT_ROWS = 100


def _sample(dataset, rows: int, seed: int):
    from ..data import bounded_rows

    dataset = bounded_rows(dataset, rows, seed=seed)  # the first rows of a stream (streaming: true)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    return dataset.select_columns(columns)


def _device(model):
    return next(model.parameters()).device


class BeforeAfterPlot:
    """Embed bounded source and target samples now (the "before"); :meth:`write` embeds them again with the
    trained model and writes the two-panel t-SNE."""

    def __init__(self, model, source, target, collator, *, seed: int = 0, rows: int = DEFAULT_ROWS,
                 batch_size: int = 64, disable_progress: bool = False):
        from ..embedding import embed

        self.source, self.target = _sample(source, rows, seed), _sample(target, rows, seed)
        self.collator, self.seed, self.batch_size = collator, seed, batch_size
        self.disable_progress = disable_progress
        common = dict(collator=collator, kind="mean", batch_size=batch_size, device=_device(model),
                      disable_progress=disable_progress)
        self.before = (embed(model, self.source, desc="t-SNE source (before)", **common),
                       embed(model, self.target, desc="t-SNE target (before)", **common))

    def write(self, model, output_dir: str | os.PathLike) -> Path:
        from ..embedding import embed
        from .plots import tsne_plot

        common = dict(collator=self.collator, kind="mean", batch_size=self.batch_size, device=_device(model),
                      disable_progress=self.disable_progress)
        after = (embed(model, self.source, desc="t-SNE source (after)", **common),
                 embed(model, self.target, desc="t-SNE target (after)", **common))
        return tsne_plot({"before training": self.before, "after training": after}, Path(output_dir) / PLOT_NAME,
                         seed=self.seed, max_iter=500)


def start_before_after_plot(trainer_args, model, data, collator, *, enabled: bool = True,
                            rows: int = DEFAULT_ROWS) -> BeforeAfterPlot | None:
    """The ``run.train`` hook before training: a :class:`BeforeAfterPlot` on the main process when the run has
    target data and the plot is on (the recipe's ``tsne_plot``, ``tsne_rows``), else ``None``. Never fails the run
    (a warning instead)."""
    switched_off = os.environ.get(ENABLE_ENV, "1") in ("0", "false", "False", "no")
    if not enabled or switched_off or data.target is None:
        return None
    if importlib.util.find_spec("matplotlib") is None:  # an optional dependency (the `plots` extra)
        return None
    if trainer_args.process_index != 0:
        return None
    try:
        return BeforeAfterPlot(model, data.train, data.target, collator, seed=trainer_args.seed, rows=rows,
                               disable_progress=trainer_args.disable_tqdm)
    except Exception as err:  # a diagnostic picture must not cost a training run
        warnings.warn(f"hf-transfer: skipped the before/after t-SNE ({err})", stacklevel=2)
        return None


def finish_before_after_plot(plot: BeforeAfterPlot | None, trainer, output_dir) -> Path | None:
    """The hook after export: write ``diagnostics_tsne.png`` into ``output_dir`` (main process only)."""
    if plot is None or not trainer.is_world_process_zero():
        return None
    if parameters_sharded(trainer) and trainer.accelerator.num_processes > 1:
        # Each process holds shards only, and a forward gathers them from all processes in lockstep: the main
        # process alone would wait forever for the others.
        warnings.warn("hf-transfer: skipped the after-training t-SNE: the engine shards the model (FSDP, ZeRO-3)",
                      stacklevel=2)
        return None
    try:
        model = trainer.accelerator.unwrap_model(trainer.model)
        return plot.write(model, output_dir)
    except Exception as err:  # the model is already exported; a plotting failure only warns
        warnings.warn(f"hf-transfer: skipped the before/after t-SNE ({err})", stacklevel=2)
        return None


__all__ = ["PLOT_NAME", "BeforeAfterPlot", "finish_before_after_plot", "start_before_after_plot"]
