"""One embedding of each row per model: the features :func:`hf_transfer.embedding.embed` computed, kept for the next
pass that asks for them.

A training run embeds the same rows with the same (not yet trained) model more than once: instance weighting embeds
the source and target tables, the before/after t-SNE then embeds samples of the same tables. Each row's features are
kept here, by model object, feature kind and the row's tokens, and a later pass with the same model (the diagnostics'
``extract_features`` called again in a notebook, too) embeds only the rows it has not seen.

A model's entry is dropped as soon as its weights change: each pass compares a checksum of the weights
(:func:`weights_version`) with the one its features were computed at. Models are held weakly: a model that is gone
takes its features with it. Rows without token ids (images) are not cached. ``HF_TRANSFER_FEATURE_CACHE=0`` switches
the cache off.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import numpy as np
import torch

#: Rows kept per model and feature kind; past this, new rows are embedded but not kept (features are ~1.5 kB a row
#: at width 384: 300,000 rows are ~460 MB).
MAX_ROWS = 300_000
ENABLE_ENV = "HF_TRANSFER_FEATURE_CACHE"
KEY_COLUMNS = ("input_ids", "token_type_ids")

_STORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") not in ("0", "false", "False", "no")


@torch.no_grad()
def weights_version(model: Any) -> tuple:
    """A checksum of ``model``'s weights: two float64 sums per parameter (of the values, and of the values weighted
    by their position modulo 7), so any step of training changes it. Not PyTorch's version counters: fused
    optimizers (AdamW's default on CUDA and in transformers 5) write parameters without bumping them. Costs one pass
    over the weights (milliseconds for MiniLM), nothing next to a feature pass."""
    sums = []
    for p in model.parameters():
        flat = p.detach().reshape(-1).double()
        weight = torch.arange(flat.numel(), device=flat.device) % 7 + 1
        sums.append(torch.stack([flat.sum(), (flat * weight).sum()]))
    if not sums:
        return ()
    return (str(next(model.parameters()).dtype), *torch.cat(sums).cpu().tolist())


def store_for(model: Any, kind: str) -> dict[bytes, np.ndarray] | None:
    """The row -> features dict of ``model`` and ``kind`` at its current weights (``None``: caching is off)."""
    if not enabled():
        return None
    try:
        entry = _STORES.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no caching
        return None
    version = weights_version(model)
    if entry.get("version") != version:
        entry.clear()
        entry["version"] = version
    return entry.setdefault(kind, {})


def row_keys(dataset: Any) -> list[bytes] | None:
    """One key per row of a tokenised ``datasets.Dataset``: its token ids (and token types), or ``None`` when it has
    no ``input_ids`` column."""
    if "input_ids" not in dataset.column_names:
        return None
    columns = [c for c in KEY_COLUMNS if c in dataset.column_names]
    values = [list(dataset.select_columns([c])[c]) for c in columns]
    return [b"|".join(np.asarray(v, dtype=np.int64).tobytes() for v in row) for row in zip(*values)]


def clear() -> None:
    """Forget every cached feature."""
    _STORES.clear()
