"""Link names from the data (class labels, domains, entities) to nodes of a knowledge graph, and report the result.

Each name is tried in order:

1. **exact** — the name is a node;
2. **normalised** — Unicode NFKC, lower case, ``_ - / & , .`` and runs of spaces become one space, a final plural
   ``s`` dropped from each word longer than three letters, the word ``and`` dropped; matched against the node
   names and their ``label`` / ``aliases`` attributes normalised the same way (the first node in graph order wins a
   tie);
3. **embedding** — cosine similarity between the encoder embedding of the name and of each node's text (its
   ``label`` attribute, else its name with ``_`` as spaces); the best node is taken when the similarity is at least
   ``threshold``.

Anything left is reported as unlinked; callers decide what an unlinked name means (a fresh head row, say).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .graph import KnowledgeGraph

Embedder = Callable[[list[str]], np.ndarray]
_SEPARATORS = re.compile(r"[\s_\-/&,.]+")


def normalise(name: str) -> str:
    """Rule 2 of the module docstring: ``"Kitchen_&_Housewares"`` -> ``"kitchen housewares"``."""
    words = _SEPARATORS.split(unicodedata.normalize("NFKC", str(name)).lower())
    words = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]
    return " ".join(w for w in words if w and w != "and")


def node_text(kg: KnowledgeGraph, node: str) -> str:
    """What a node reads as for embedding: its ``label`` attribute, else its name with ``_`` as spaces."""
    label = kg.graph.nodes[node].get("label")
    return str(label) if label else str(node).replace("_", " ")


@dataclass
class Link:
    """One name and where it landed: ``how`` is ``"exact"``, ``"normalised"``, ``"embedding"`` or ``None``."""

    name: str
    node: str | None
    how: str | None
    score: float = 0.0


@dataclass
class LinkReport:
    """The links of a set of names, in the order given."""

    links: list[Link] = field(default_factory=list)

    @property
    def mapping(self) -> dict[str, str | None]:
        return {link.name: link.node for link in self.links}

    @property
    def nodes(self) -> list[str | None]:
        return [link.node for link in self.links]

    @property
    def linked(self) -> list[Link]:
        return [link for link in self.links if link.node is not None]

    @property
    def unlinked(self) -> list[str]:
        return [link.name for link in self.links if link.node is None]

    def counts(self) -> dict[str, int]:
        out = {"exact": 0, "normalised": 0, "embedding": 0, "unlinked": 0}
        for link in self.links:
            out[link.how or "unlinked"] += 1
        return out

    def to_dict(self) -> dict:
        return {
            "counts": self.counts(),
            "links": [{"name": ln.name, "node": ln.node, "how": ln.how, "score": round(ln.score, 6)}
                      for ln in self.links],
        }

    def to_markdown(self) -> str:
        lines = ["| name | node | how | score |", "|---|---|---|---|"]
        lines += [f"| {ln.name} | {ln.node or '—'} | {ln.how or 'unlinked'} | {ln.score:.3f} |" for ln in self.links]
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        return "\n".join(lines) + f"\n\n{counts}\n"


def link_names(
    names: Sequence[str],
    kg: KnowledgeGraph,
    *,
    embed: Embedder | None = None,
    threshold: float = 0.6,
    kinds: Sequence[str] | None = None,
) -> LinkReport:
    """Link each name to a node (see the module docstring).

    Args:
        embed: ``texts -> (n, d)`` embeddings for rule 3 (e.g. :func:`encoder_embedder`); ``None`` skips it.
        threshold: minimum cosine similarity for an embedding link.
        kinds: only link to nodes whose ``kind`` attribute is one of these (e.g. ``["domain"]``).
    """
    if not -1.0 <= threshold <= 1.0:
        raise UserError(f"threshold: a cosine similarity in [-1, 1], got {threshold}")
    candidates = [n for n, d in kg.graph.nodes(data=True) if kinds is None or d.get("kind") in kinds]
    allowed = set(candidates)
    by_normal: dict[str, str] | None = None  # built only if some name is not a node (costly on a large graph)
    links: list[Link] = []
    for name in names:
        if name in allowed:
            links.append(Link(str(name), str(name), "exact", 1.0))
            continue
        if by_normal is None:
            by_normal = {}
            for node in candidates:
                attrs = kg.graph.nodes[node]
                for text in [node, attrs.get("label"), *(attrs.get("aliases") or [])]:
                    if text:
                        by_normal.setdefault(normalise(text), node)
        if normalise(name) in by_normal:
            links.append(Link(str(name), by_normal[normalise(name)], "normalised", 1.0))
        else:
            links.append(Link(str(name), None, None, 0.0))
    pending = [i for i, ln in enumerate(links) if ln.node is None]
    if embed is not None and pending and candidates:
        texts = [node_text(kg, n) for n in candidates]
        queries = [links[i].name.replace("_", " ") for i in pending]
        vectors = np.asarray(embed(queries + texts), dtype=np.float64)
        vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        sims = vectors[: len(queries)] @ vectors[len(queries):].T
        for row, i in enumerate(pending):
            best = int(np.argmax(sims[row]))
            score = float(sims[row, best])
            links[i] = Link(links[i].name, candidates[best], "embedding", score) if score >= threshold else Link(
                links[i].name, None, None, score
            )
    return LinkReport(links)


def encoder_embedder(
    model_or_path, tokenizer=None, *, max_length: int = 32, batch_size: int = 64, device=None
) -> Embedder:
    """An :data:`Embedder` from a transformer encoder: mean-pooled last hidden states.

    ``model_or_path`` is a Hub id / folder (loaded with ``AutoModel``; the packaged MiniLM resolves offline) or an
    already loaded model (a task model works: its backbone is used), with its ``tokenizer``.
    """
    import torch

    from ..backbones import _unwrap, backbone_prefix, load_tokenizer, resolve_model_path

    if isinstance(model_or_path, str):
        from transformers import AutoModel

        tokenizer = tokenizer or load_tokenizer(model_or_path)
        encoder = AutoModel.from_pretrained(resolve_model_path(model_or_path))
    else:
        if tokenizer is None:
            raise UserError("encoder_embedder: pass the tokenizer with a loaded model")
        inner = _unwrap(model_or_path)
        prefix = getattr(inner, "base_model_prefix", "")
        encoder = getattr(inner, backbone_prefix(inner)) if prefix and hasattr(inner, prefix) else inner

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        was_training = encoder.training
        encoder.eval()
        target = device or next(encoder.parameters()).device
        chunks = []
        try:
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt").to(target)
                hidden = encoder(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).float().cpu())
        finally:
            encoder.train(was_training)
        return torch.cat(chunks).numpy()

    return embed
