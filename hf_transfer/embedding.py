"""The frozen-feature pass every layer shares: a model's features of whole tables or of single batches, as the
classifier head receives them (``head_input``) or mean-pooled over the backbone's tokens (``mean``).

Instance weighting (:mod:`hf_transfer.methods.instance_weighting`), the before/after t-SNE and the diagnostics
(:mod:`hf_transfer.diagnostics`) all embed through here, below both of them.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

# What a collated batch passes to the model (an image column becomes ``pixel_values`` in the collator).
FORWARD_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


@contextmanager
def feature_pass(model, *, kind: str, tokens: bool):
    """Put ``model`` in eval mode and yield ``features(batch, device) -> (b, d)`` float32 CPU tensor; restore the mode
    (and remove the hook) on exit. One definition of the features, for whole tables (:func:`embed`) and for batches of
    a stream (:class:`StreamingWeights`)."""
    from .backbones import FeatureTap, _unwrap, backbone_prefix, find_feature_module

    was_training = model.training
    model.eval()
    tap = None
    # Images have no token mask to mean-pool over: their feature is always what the head receives.
    if kind == "head_input" or not tokens:
        _, module = find_feature_module(model, model.config.num_labels)
        tap = FeatureTap(module, model)  # the model's input_ids pick the token on decoder-only classifiers
    inner = _unwrap(model)
    backbone = getattr(inner, backbone_prefix(inner))

    @torch.no_grad()
    def features(batch: dict[str, torch.Tensor], device) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in batch.items() if k in FORWARD_INPUTS}
        if tap is not None:
            model(**batch)
            return tap.pop().float().cpu()
        hidden = backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).float().cpu()

    try:
        yield features
    finally:
        if tap is not None:
            tap.remove()
        model.train(was_training)


def embed(model, dataset, collator, *, kind: str, batch_size: int, device, desc: str,
          disable_progress: bool = False) -> np.ndarray:
    """Frozen features of every row of a tokenised dataset, shape ``(n, d)``, in dataset order.
    ``disable_progress`` hides the progress bar (a run's ``disable_tqdm``).

    Rows this model (at its current weights) already embedded with this ``kind`` come from
    :mod:`hf_transfer.feature_cache`; only the others run through the model."""
    from . import feature_cache

    store = feature_cache.store_for(model, kind)
    keys = feature_cache.row_keys(dataset) if store is not None else None
    if not keys:  # no token ids (images), an empty table, or caching off
        return _embed_rows(model, dataset, collator, kind=kind, batch_size=batch_size, device=device, desc=desc,
                           disable_progress=disable_progress)
    missing = list({key: i for i, key in enumerate(keys) if key not in store}.values())
    if missing:
        todo = dataset if len(missing) == len(keys) else dataset.select(missing)
        fresh = _embed_rows(model, todo, collator, kind=kind, batch_size=batch_size, device=device, desc=desc,
                            disable_progress=disable_progress)
        if len(store) + len(missing) > feature_cache.MAX_ROWS:
            found = {keys[i]: row for i, row in zip(missing, fresh)}
            return np.stack([found[key] if key in found else store[key] for key in keys])
        store.update((keys[i], row) for i, row in zip(missing, fresh))
    return np.stack([store[key] for key in keys])


def _embed_rows(model, dataset, collator, *, kind: str, batch_size: int, device, desc: str,
                disable_progress: bool = False) -> np.ndarray:
    """Run every row of ``dataset`` through ``model`` (no cache)."""
    from .data import MODEL_INPUT_KEYS

    columns = [c for c in MODEL_INPUT_KEYS if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator)
    with feature_pass(model, kind=kind, tokens="input_ids" in columns) as features:
        chunks = [features(batch, device) for batch in tqdm(loader, desc=desc, leave=False, disable=disable_progress)]
    return torch.cat(chunks).numpy()
