"""Interpretability: which source rows and which input tokens drive target predictions.

* :func:`nearest_source_neighbours` — for each misclassified target row, the source rows closest to it in feature
  space (cosine): the training evidence the model generalised from when it went wrong.
* :func:`top_weighted_sources` — the source rows an instance-weighting estimator ranks most target-like.
* :func:`token_attributions` — gradient x input on the input embeddings (Shrikumar et al. 2016; Denil et al. 2014):
  per token, ``sum_d e_d * d logit_y / d e_d``, the first-order contribution of that token's embedding to the
  class logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..instance._base import check_features


@dataclass
class Neighbours:
    """``target_index[i]``'s nearest source rows are ``source_index[i]`` at cosine ``similarity[i]``."""

    target_index: np.ndarray
    source_index: np.ndarray
    similarity: np.ndarray


def nearest_source_neighbours(source_features, target_features, *, rows=None, k: int = 3) -> Neighbours:
    """The ``k`` most cosine-similar source rows for each target row in ``rows`` (indices or a boolean mask, e.g.
    the misclassified rows; default: all rows), most similar first."""
    from sklearn.neighbors import NearestNeighbors

    xs = check_features(source_features, "source_features")
    xt = check_features(target_features, "target_features")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"source and target features differ in width: {xs.shape[1]} vs {xt.shape[1]}")
    index = np.arange(len(xt)) if rows is None else np.asarray(rows)
    if index.dtype == bool:
        index = np.flatnonzero(index)
    k = min(k, len(xs))
    if len(index) == 0:
        return Neighbours(index, np.zeros((0, k), dtype=np.int64), np.zeros((0, k)))
    nn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(xs)
    distance, neighbours = nn.kneighbors(xt[index])
    return Neighbours(index, neighbours, 1.0 - distance)


def top_weighted_sources(weights, k: int = 10) -> list[tuple[int, float]]:
    """``[(source_index, weight), ...]`` of the ``k`` largest instance weights, largest first."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    order = np.argsort(-w, kind="stable")[:k]
    return [(int(i), float(w[i])) for i in order]


def token_attributions(model, tokenizer, text: str, *, label: int | None = None, max_length: int = 128,
                       device: str = "cpu") -> list[tuple[str, float]]:
    """Gradient x input of ``text``'s tokens for the logit of ``label`` (default: the predicted class).

    Returns ``[(token, attribution), ...]`` in input order, special tokens included. Positive values push the
    prediction towards ``label``. The model is put in eval mode (dropout off) and its parameters get no gradient.
    """
    model = model.to(device).eval()
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    embeddings = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    inputs = {k: v for k, v in enc.items() if k != "input_ids"}
    logits = model(inputs_embeds=embeddings, **inputs).logits[0]
    target = int(logits.argmax()) if label is None else int(label)
    (grad,) = torch.autograd.grad(logits[target], embeddings)
    scores = (grad * embeddings).sum(-1)[0].detach().cpu().numpy()
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return [(tok, float(s)) for tok, s in zip(tokens, scores)]
