"""``method: instance_weighting`` — train on source rows weighted by how target-like they are.

Before training, the pretrained backbone embeds every source and target row (one frozen pass, batched, with a
progress bar); an estimator from :mod:`hf_transfer.instance` (``density_ratio`` by default; ``kmm``, ``kliep``,
``nearest_neighbors``) turns the two feature sets into one non-negative weight per source row; the weights become
the ``sample_weight`` column and the trainer's supervised loss becomes the weight-normalised cross-entropy. With
``streaming: true`` the estimator is fitted on a bounded sample and scores each streamed batch as it is read
(:func:`add_streaming_weights`).

It adds no loss of its own, so it combines with any method: ``method: [instance_weighting, dann]`` trains DANN
on the re-weighted source. The weights' summary (effective sample size, max ...) goes into ``metrics.json``
under ``instance_weights/`` and the weights themselves into ``instance_weights.npy`` beside the model.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..embedding import FORWARD_INPUTS, embed, feature_pass  # noqa: F401  (also named here)
from ..errors import RecipeError
from .base import MethodConfig
from .registry import register_method

WEIGHTS_FILE = "instance_weights.npy"
FEATURE_KINDS = ("mean", "head_input")


@dataclass
class InstanceWeightingConfig(MethodConfig):
    """Fields of ``instance_weighting``."""

    estimator: str = field(
        default="density_ratio",
        metadata={"help": "Weighting estimator: density_ratio, kmm, kliep or nearest_neighbors."},
    )
    estimator_args: dict | str = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments of the estimator, e.g. {max_weight: 10} or {B: 20, eps: 0.01}."},
    )
    features: str = field(
        default="mean",
        metadata={
            "help": "Which features the estimator sees: 'mean' (mean-pooled last hidden state of the pretrained "
            "backbone, the sentence-embedding view) or 'head_input' (what the classifier head receives). "
            "Images always use 'head_input'."
        },
    )
    feature_batch_size: int = field(default=64, metadata={"help": "Batch size of the frozen feature pass."})
    max_target_rows: int | None = field(
        default=20000, metadata={"help": "Estimate from at most this many target rows (a seeded sample)."}
    )

    def __post_init__(self):
        if isinstance(self.estimator_args, str):
            parsed = yaml.safe_load(self.estimator_args) if self.estimator_args.strip() else {}
            if not isinstance(parsed, dict):
                raise RecipeError(
                    f"instance_weighting.estimator_args: expected a mapping, got {self.estimator_args!r}"
                )
            self.estimator_args = parsed
        from ..instance import available_weightings

        if self.estimator not in available_weightings():
            from ..errors import unknown_choice

            raise unknown_choice("instance_weighting.estimator", self.estimator, available_weightings())
        if self.features not in FEATURE_KINDS:
            raise RecipeError(f"instance_weighting.features: choose one of {', '.join(FEATURE_KINDS)}")
        if self.feature_batch_size <= 0:
            raise RecipeError(f"instance_weighting.feature_batch_size: must be > 0, got {self.feature_batch_size}")


class StreamingWeights:
    """The ``map`` function that weights a streamed source, batch by batch, as it is read (``streaming: true``).

    Each batch of tokenised rows is embedded by a frozen copy of the pretrained model (the features the estimator
    was fitted on; the model being trained drifts away from them) and scored with the fitted estimator's
    ``predict_weights``, so rows the estimator never saw get weights on the scale of the sample's. Deterministic for a
    given row, so a resumed run re-weights the rows it skips exactly as before.
    """

    def __init__(self, frozen_model, estimator, collator, *, kind: str, device):
        self.model, self.estimator, self.collator = frozen_model, estimator, collator
        self.kind, self.device = kind, device

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        from ..data import MODEL_INPUT_KEYS

        keys = [k for k in MODEL_INPUT_KEYS if k in batch]
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        with feature_pass(self.model, kind=self.kind, tokens="input_ids" in keys) as features:
            x = features(self.collator(rows), self.device)
        return {"sample_weight": self.estimator.predict_weights(x.numpy()).astype(np.float32).tolist()}


def _save_weights(weights: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, weights)
    os.replace(tmp, path)


def _make_estimator(config: InstanceWeightingConfig):
    from ..instance import get_weighting

    try:
        return get_weighting(config.estimator, **config.estimator_args)
    except ValueError as err:
        raise RecipeError(f"instance_weighting.estimator_args: {err}") from None


def add_instance_weights(config: InstanceWeightingConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: put a ``sample_weight`` column on the source training rows.

    On several processes the main process estimates and writes ``instance_weights.npy``; the others read it, so every
    process trains with the same weights. A streamed source (``streaming: true``) is weighted lazily instead: see
    :func:`add_streaming_weights`.
    """
    from ..instance import weight_summary

    data, args = context["data"], context["args"]
    if data.target is None:
        raise RecipeError("instance_weighting: needs target_data (the rows the source is weighted towards)")
    if getattr(data, "sample_rows", None) is not None:  # streaming: true
        return add_streaming_weights(config, context)
    path = Path(args.output_dir) / WEIGHTS_FILE
    with args.main_process_first(desc="instance weights"):
        if args.process_index == 0:
            target = data.target
            if config.max_target_rows and len(target) > config.max_target_rows:
                target = target.shuffle(seed=args.seed).select(range(config.max_target_rows))
            common = dict(kind=config.features, batch_size=config.feature_batch_size, device=args.device,
                          disable_progress=args.disable_tqdm)
            xs = embed(context["model"], data.train, context["collator"], desc="Embedding source", **common)
            xt = embed(context["model"], target, context["collator"], desc="Embedding target", **common)
            weights = _make_estimator(config).fit(xs, xt).weights_.astype(np.float32)
            _save_weights(weights, path)
        else:
            weights = np.load(path, allow_pickle=False)
    if len(weights) != len(data.train):
        raise RuntimeError(f"{path}: {len(weights)} weights for {len(data.train)} source rows")
    train = data.train.remove_columns([c for c in ("sample_weight",) if c in data.train.column_names])
    data.train = train.add_column("sample_weight", weights.tolist())
    summary = weight_summary(weights)
    context["metrics"].update({f"instance_weights/{k}": v for k, v in summary.items()})
    return context


def add_streaming_weights(config: InstanceWeightingConfig, context: dict[str, Any]) -> dict[str, Any]:
    """``prepare`` for a streamed source: fit the estimator on a bounded sample, weight every streamed row lazily.

    The estimator sees the first ``streaming_sample_size`` rows the source and target streams yield (through their
    shuffle buffers; at most ``max_target_rows`` target rows), embedded by a frozen copy of the pretrained model;
    then :class:`StreamingWeights` scores each source batch as it is read. Only estimators that can score rows they
    were not fitted on (``predict_weights``: density_ratio, kliep) qualify. Every process fits the same estimator on
    the same rows (no file to wait for); the main process writes the sample's weights to ``instance_weights.npy``,
    and their summary goes into the metrics (``instance_weights/n`` is then the sample's size).
    """
    from ..data import bounded_rows
    from ..instance import WEIGHTINGS, weight_summary

    data, args = context["data"], context["args"]
    estimator = _make_estimator(config)
    if not hasattr(estimator, "predict_weights"):
        scorers = sorted(name for name, cls in WEIGHTINGS.items() if hasattr(cls, "predict_weights"))
        raise RecipeError(
            f"instance_weighting.estimator: {config.estimator} weights only the rows it is fitted on, so it cannot "
            f"weight rows streamed later; with streaming: true use {' or '.join(scorers)} (or set streaming: false)"
        )
    if estimator.get_params().get("random_state", 0) is None:
        # Every process, and a resumed run, refits the estimator: the same seed makes them all the same estimator.
        estimator.set_params(random_state=args.seed)
    rows = data.sample_rows
    source = bounded_rows(data.train, rows, field="source_data")
    target = bounded_rows(data.target, min(rows, config.max_target_rows or rows), field="target_data")
    frozen = copy.deepcopy(context["model"]).requires_grad_(False).eval()
    common = dict(kind=config.features, batch_size=config.feature_batch_size, device=args.device,
                  disable_progress=args.disable_tqdm)
    xs = embed(frozen, source, context["collator"], desc="Embedding source sample", **common)
    xt = embed(frozen, target, context["collator"], desc="Embedding target sample", **common)
    weights = estimator.fit(xs, xt).weights_.astype(np.float32)
    if args.process_index == 0:
        _save_weights(weights, Path(args.output_dir) / WEIGHTS_FILE)
    data.train = data.train.map(
        StreamingWeights(frozen, estimator, context["collator"], kind=config.features, device=args.device),
        batched=True,
        batch_size=config.feature_batch_size,
    )
    context["metrics"].update({f"instance_weights/{k}": v for k, v in weight_summary(weights).items()})
    return context


register_method("instance_weighting", InstanceWeightingConfig, prepare=add_instance_weights)
