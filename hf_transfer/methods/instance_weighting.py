"""``method: instance_weighting`` — train on source rows weighted by how target-like they are.

Before training, the pretrained backbone embeds every source and target row (one frozen pass, batched, with a
progress bar); an estimator from :mod:`hf_transfer.instance` (``density_ratio`` by default; ``kmm``, ``kliep``,
``nearest_neighbors``) turns the two feature sets into one non-negative weight per source row; the weights become
the ``sample_weight`` column and the trainer's supervised loss becomes the weight-normalised cross-entropy.

It adds no loss of its own, so it combines with any method: ``method: [instance_weighting, dann]`` trains DANN
on the re-weighted source. The weights' summary (effective sample size, max ...) goes into ``metrics.json``
under ``instance_weights/`` and the weights themselves into ``instance_weights.npy`` beside the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

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


# What a collated batch passes to the model (an image column becomes ``pixel_values`` in the collator).
FORWARD_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


@torch.no_grad()
def embed(model, dataset, collator, *, kind: str, batch_size: int, device, desc: str) -> np.ndarray:
    """Frozen features of every row of a tokenised dataset, shape ``(n, d)``, in dataset order."""
    from ..backbones import FeatureTap, _unwrap, backbone_prefix, find_feature_module
    from ..data import MODEL_INPUT_KEYS

    was_training = model.training
    model.eval()
    columns = [c for c in MODEL_INPUT_KEYS if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator)
    tap = None
    # Images have no token mask to mean-pool over: their feature is always what the head receives.
    if kind == "head_input" or "input_ids" not in columns:
        _, module = find_feature_module(model, model.config.num_labels)
        tap = FeatureTap(module)
    inner = _unwrap(model)
    backbone = getattr(inner, backbone_prefix(inner))
    chunks = []
    try:
        for batch in tqdm(loader, desc=desc, leave=False):
            batch = {k: v.to(device) for k, v in batch.items() if k in FORWARD_INPUTS}
            if tap is not None:
                model(**batch)
                chunks.append(tap.pop().float().cpu())
            else:
                hidden = backbone(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).float().cpu())
    finally:
        if tap is not None:
            tap.remove()
        model.train(was_training)
    return torch.cat(chunks).numpy()


def add_instance_weights(config: InstanceWeightingConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: put a ``sample_weight`` column on the source training rows.

    On several processes the main process estimates and writes ``instance_weights.npy``; the others read it, so every
    process trains with the same weights.
    """
    from ..instance import get_weighting, weight_summary

    data, args = context["data"], context["args"]
    if data.target is None:
        raise RecipeError("instance_weighting: needs target_data (the rows the source is weighted towards)")
    path = Path(args.output_dir) / WEIGHTS_FILE
    with args.main_process_first(desc="instance weights"):
        if args.process_index == 0:
            target = data.target
            if config.max_target_rows and len(target) > config.max_target_rows:
                target = target.shuffle(seed=args.seed).select(range(config.max_target_rows))
            common = dict(kind=config.features, batch_size=config.feature_batch_size, device=args.device)
            xs = embed(context["model"], data.train, context["collator"], desc="Embedding source", **common)
            xt = embed(context["model"], target, context["collator"], desc="Embedding target", **common)
            try:
                estimator = get_weighting(config.estimator, **config.estimator_args)
            except ValueError as err:
                raise RecipeError(f"instance_weighting.estimator_args: {err}") from None
            weights = estimator.fit(xs, xt).weights_.astype(np.float32)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, weights)
            os.replace(tmp, path)
        else:
            weights = np.load(path, allow_pickle=False)
    if len(weights) != len(data.train):
        raise RuntimeError(f"{path}: {len(weights)} weights for {len(data.train)} source rows")
    train = data.train.remove_columns([c for c in ("sample_weight",) if c in data.train.column_names])
    data.train = train.add_column("sample_weight", weights.tolist())
    summary = weight_summary(weights)
    context["metrics"].update({f"instance_weights/{k}": v for k, v in summary.items()})
    return context


register_method("instance_weighting", InstanceWeightingConfig, prepare=add_instance_weights)
