"""Metric-based meta-learning: prototypical networks (Snell, Swersky & Zemel, NeurIPS 2017) on any HF encoder.

The encoder is any ``AutoModel`` (or a PEFT model on one); a text's embedding is the mean of its token states over the
real tokens (what sentence-transformers encoders such as all-MiniLM-L6-v2 are trained with) or the first token's.
A class prototype is the mean embedding of its support rows, and a query's logit for class ``c`` is

* ``euclidean``: ``-||q - c||^2`` (squared distance, as in the paper), divided by ``temperature``;
* ``cosine``: ``cos(q, c) / temperature`` (a scale of ``1 / temperature``, 10 by default, keeps the softmax from
  being flat over the narrow range [-1, 1]).

The loss is the cross-entropy of the query rows under these logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = ("euclidean", "cosine")
POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "mean") -> torch.Tensor:
    """``(B, L, d) -> (B, d)``: mean over the real tokens, or the first token."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling: unknown {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class Embedder(nn.Module):
    """A text encoder as a ``batch -> (B, d)`` embedding function.

    Args:
        encoder: an ``AutoModel`` (or a PEFT model wrapping one); any extra keys of a batch (``labels``) are dropped.
        pooling: ``mean`` or ``cls``.
    """

    def __init__(self, encoder: nn.Module, *, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: unknown {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if pooling == "cls" and any(getattr(m, "is_causal", False) is True for m in encoder.modules()):
            # Under causal attention the first token sees only itself: its state is the same for every text.
            from ..errors import RecipeError

            raise RecipeError(f"pooling: cls takes the first token, which a causal (decoder-only) encoder such as "
                              f"{type(encoder).__name__} gives the same state for every text; use pooling: mean")
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs, return_dict=True).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """``(N, d)``: the mean embedding of each episode class ``0..n_way-1``."""
    one_hot = F.one_hot(labels.long(), n_way).to(embeddings.dtype)  # (S, N)
    counts = one_hot.sum(0)
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no support rows")
    return one_hot.T @ embeddings / counts.unsqueeze(1)


def prototype_logits(queries: torch.Tensor, protos: torch.Tensor, *, distance: str = "euclidean",
                     temperature: float = 1.0) -> torch.Tensor:
    """``(Q, N)`` logits of queries against prototypes (see the module docstring)."""
    if distance == "euclidean":
        return -torch.cdist(queries.float(), protos.float()).pow(2) / temperature
    if distance == "cosine":
        return F.normalize(queries.float(), dim=-1) @ F.normalize(protos.float(), dim=-1).T / temperature
    raise ValueError(f"distance: unknown {distance!r}; choose one of {', '.join(DISTANCES)}")


def protonet_loss(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                  query_labels: torch.Tensor, *, n_way: int, distance: str = "euclidean",
                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The episode loss and the query logits, from support and query embeddings."""
    logits = prototype_logits(query, prototypes(support, support_labels, n_way), distance=distance,
                              temperature=temperature)
    return F.cross_entropy(logits, query_labels.long()), logits


def default_temperature(distance: str) -> float:
    """1 for squared Euclidean distances (the paper's), 0.1 (a scale of 10) for cosine similarities."""
    return 0.1 if distance == "cosine" else 1.0
