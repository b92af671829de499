"""Graph-guided source selection: which labelled domains to train on for a new target domain, and how much.

:func:`rank_sources` scores every candidate source domain by its closeness to the target in the graph and returns
them best first with weights that sum to 1. Two scores:

* ``"ppr"`` (default) — personalised PageRank restarted at the target (the fixed point of ``networkx.pagerank``
  on the undirected weighted view, teleport probability ``1 - alpha``; :func:`personalized_pagerank`): the
  stationary mass of a walker that keeps returning to the target; it credits many short heavy paths.
* ``"walk"`` — :func:`hf_transfer.relation.relatedness` (discounted ``hops``-step random-walk mass).

The weights compose with the rest of the package without new machinery: :func:`mix_sources` writes one source
file whose rows come from each domain in proportion to its weight (train on it with any method, instance
weighting included), and :func:`multitask_tasks` turns the ranking into the ``tasks:`` list of a multi-task recipe
with ``loss_weight`` per task.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, UserError
from .graph import KnowledgeGraph
from .linking import Embedder, link_names
from .transfer import personalized_pagerank, relatedness

SCORES = ("ppr", "walk")


@dataclass
class RankedSource:
    """A candidate source: its name, the graph node it linked to, its raw score and its normalised weight."""

    name: str
    node: str
    score: float
    weight: float


def rank_sources(
    kg: KnowledgeGraph,
    target: str,
    candidates: Sequence[str],
    *,
    score: str = "ppr",
    top_k: int | None = None,
    alpha: float = 0.85,
    hops: int = 3,
    decay: float = 0.5,
    temperature: float = 1.0,
    embed: Embedder | None = None,
) -> list[RankedSource]:
    """Rank candidate source domains for ``target`` (names are linked to nodes with :func:`link_names`).

    Args:
        score: ``"ppr"`` or ``"walk"`` (see the module docstring).
        top_k: keep the best ``top_k`` (all by default); weights are renormalised over the kept ones.
        alpha: PageRank damping (``ppr``); ``hops``, ``decay``: the walk (``walk``).
        temperature: weights are ``score ** (1 / temperature)`` normalised; > 1 flattens them, < 1 sharpens.
        embed: optional encoder for names that do not match a node by string.

    Returns:
        the kept candidates, best first (ties by name). Candidates that do not link to a node, or score 0 (not
        connected to the target), are left out; if none is left a :class:`UserError` says why.
    """
    if score not in SCORES:
        from ..errors import unknown_choice

        raise unknown_choice("score", score, SCORES)
    if not 0 < alpha < 1:
        raise UserError(f"alpha: must be in (0, 1), got {alpha}")
    if temperature <= 0:
        raise UserError(f"temperature: must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k: must be >= 1, got {top_k}")
    report = link_names([target, *candidates], kg, embed=embed)
    target_node = report.links[0].node
    if target_node is None:
        raise UserError(f"target: {target!r} links to no node of the graph; add it, or pass an encoder (embed=)")
    linked = [(ln.name, ln.node) for ln in report.links[1:] if ln.node is not None and ln.node != target_node]
    if not linked:
        raise UserError(f"candidates: none of {list(candidates)} links to a graph node other than the target's")
    if score == "ppr":
        ranks = personalized_pagerank(kg, {target_node: 1.0}, alpha=alpha)
        raw = [ranks.get(node, 0.0) for _, node in linked]
    else:
        raw = list(relatedness(kg, [target_node], [node for _, node in linked], hops=hops, decay=decay)[0])
    ranked = sorted(
        ((name, node, float(s)) for (name, node), s in zip(linked, raw) if s > 0), key=lambda x: (-x[2], x[0])
    )
    if top_k is not None:
        ranked = ranked[:top_k]
    if not ranked:
        raise UserError(f"candidates: none is connected to {target!r} in the graph")
    powered = [s ** (1.0 / temperature) for _, _, s in ranked]
    total = sum(powered)
    return [RankedSource(name, node, s, p / total) for (name, node, s), p in zip(ranked, powered)]


def mix_sources(
    ranked: Sequence[RankedSource],
    files: Mapping[str, str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    total_rows: int | None = None,
    seed: int = 0,
    domain_column: str = "source_domain",
) -> dict[str, int]:
    """Write one JSON Lines source file drawing ``round(weight * total_rows)`` rows from each ranked domain.

    ``files`` maps each domain name to its JSON Lines file. ``total_rows`` defaults to the size of the largest
    file. Rows are sampled without replacement (with replacement only when a domain is asked for more rows than it
    has), shuffled together with ``seed``, and tagged with ``domain_column``. Returns rows per domain.
    """
    rng = random.Random(seed)
    tables = {}
    for item in ranked:
        if item.name not in files:
            raise DataError(f"files: no file for source domain {item.name!r}; have {sorted(files)}")
        path = Path(files[item.name])
        if not path.is_file():
            raise DataError(f"files: {str(path)!r} (domain {item.name!r}) does not exist")
        with open(path, encoding="utf-8") as handle:
            tables[item.name] = [json.loads(line) for line in handle if line.strip()]
    total = total_rows or max(len(rows) for rows in tables.values())
    counts = _apportion([item.weight for item in ranked], total)
    mixed, used = [], {}
    for item, count in zip(ranked, counts):
        rows = tables[item.name]
        picked = rng.sample(rows, count) if count <= len(rows) else [rng.choice(rows) for _ in range(count)]
        mixed += [{**row, domain_column: item.name} for row in picked]
        used[item.name] = count
    rng.shuffle(mixed)
    from ..hub import atomic_write_text

    atomic_write_text(out_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in mixed))
    return used


def _apportion(weights: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total``, proportional to ``weights`` (largest remainders first)."""
    exact = [w * total / sum(weights) for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def multitask_tasks(
    ranked: Sequence[RankedSource], files: Mapping[str, str], *, eval_files: Mapping[str, str] | None = None
) -> list[dict]:
    """The ``tasks:`` entries of a multi-task recipe, one per ranked source, ``loss_weight`` = weight x count
    (so the weights keep their mean of 1 across tasks)."""
    out = []
    for item in ranked:
        task = {"name": item.name, "data": str(files[item.name]), "loss_weight": item.weight * len(ranked)}
        if eval_files and item.name in eval_files:
            task["eval_data"] = str(eval_files[item.name])
        out.append(task)
    return out

