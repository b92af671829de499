"""The numbers the graph gives transfer: relatedness between nodes, the label-graph Laplacian and its smoothness
term, and the matrix that builds a target classifier from a source classifier.

**Relatedness** (:func:`relatedness`) is the discounted random-walk mass from one node to another within ``hops``
steps: with ``P = D^-1 A`` the random-walk matrix of the undirected weighted graph,
``R = sum_{r=1..hops} decay^(r-1) P^r``; ``R[a, b]`` is high when short, heavy paths lead from ``a`` to ``b``.
Only the requested rows are computed (sparse vector-matrix products), so it scales to large graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import UserError
from .graph import KnowledgeGraph


def _check_walk(hops: int, decay: float) -> None:
    if hops < 1:
        raise UserError(f"hops: must be >= 1, got {hops}")
    if not 0 < decay <= 1:
        raise UserError(f"decay: must be in (0, 1], got {decay}")


def random_walk_matrix(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """``P = D^-1 A`` (rows of isolated nodes stay zero)."""
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv = np.zeros_like(degree)
    inv[degree > 0] = 1.0 / degree[degree > 0]
    return (sp.diags(inv) @ adjacency).tocsr()


def relatedness(
    kg: KnowledgeGraph, rows: Sequence[str], columns: Sequence[str], *, hops: int = 2, decay: float = 0.5
) -> np.ndarray:
    """``R[rows, columns]`` with ``R = sum_{r=1..hops} decay^(r-1) P^r`` (see the module docstring).

    Returns a dense ``(len(rows), len(columns))`` array. Every name must be a node of the graph.
    """
    _check_walk(hops, decay)
    for node in [*rows, *columns]:
        kg.require(node)
    adjacency, order = kg.adjacency()
    index = {n: i for i, n in enumerate(order)}
    p = random_walk_matrix(adjacency)
    start = sp.csr_matrix(
        (np.ones(len(rows)), (np.arange(len(rows)), [index[r] for r in rows])), shape=(len(rows), len(order))
    )
    walk, total = start, sp.csr_matrix(start.shape)
    for r in range(hops):
        walk = walk @ p
        total = total + decay**r * walk
    return total[:, [index[c] for c in columns]].toarray()


def personalized_pagerank(
    kg: KnowledgeGraph, seeds: dict[str, float], *, alpha: float = 0.85, tol: float = 1e-6, max_iter: int = 100
) -> dict[str, float]:
    """Personalised PageRank on the undirected weighted view, by power iteration on the cached adjacency.

    The same fixed point as ``networkx.pagerank(kg.undirected(), alpha, personalization=seeds, weight="weight")``
    (dangling mass returns to the seeds; stops when the L1 change is below ``n * tol``), without rebuilding a
    scipy matrix on every call, which dominates on large graphs.
    """
    if not 0 < alpha < 1:
        raise UserError(f"alpha: must be in (0, 1), got {alpha}")
    adjacency, order = kg.adjacency()
    index = {n: i for i, n in enumerate(order)}
    n = len(order)
    p = np.zeros(n)
    for node, weight in seeds.items():
        kg.require(node, field="seeds")
        p[index[node]] = weight
    if p.sum() <= 0:
        raise UserError("seeds: give at least one seed node a positive weight")
    p /= p.sum()
    walk = random_walk_matrix(adjacency).T.tocsr()
    dangling = np.asarray(adjacency.sum(axis=1)).ravel() == 0
    x = p.copy()
    for _ in range(max_iter):
        previous = x
        x = alpha * (walk @ x + x[dangling].sum() * p) + (1 - alpha) * p
        if np.abs(x - previous).sum() < n * tol:
            break
    return dict(zip(order, x.tolist()))


def label_adjacency(kg: KnowledgeGraph, nodes: Sequence[str], *, hops: int = 1, decay: float = 0.5) -> np.ndarray:
    """Symmetric, zero-diagonal affinity between label nodes.

    ``hops == 1``: the direct edge weights between the nodes (the :meth:`KnowledgeGraph.adjacency` convention).
    ``hops > 1``: ``(R + R^T) / 2`` of :func:`relatedness` among the nodes, so labels linked only through an
    intermediate node (a shared parent category) are related too. Several labels may map to the same node; they
    are then fully related (affinity 1 with ``hops == 1``, the maximum row value otherwise).
    """
    unique = list(dict.fromkeys(nodes))
    if hops == 1:
        _check_walk(hops, decay)
        for node in unique:
            kg.require(node)
        sub = kg.adjacency(unique)[0].toarray()
    else:
        sub = relatedness(kg, unique, unique, hops=hops, decay=decay)
        sub = (sub + sub.T) / 2.0
    np.fill_diagonal(sub, 0.0)
    position = [unique.index(n) for n in nodes]
    out = sub[np.ix_(position, position)]
    same = np.equal.outer(position, position) & ~np.eye(len(nodes), dtype=bool)
    if same.any():
        out[same] = 1.0 if hops == 1 else max(float(sub.max()), 1e-12)
    return out


def laplacian(adjacency: torch.Tensor, *, normalized: bool = False) -> torch.Tensor:
    """``L = D - A`` or, with ``normalized``, ``I - D^-1/2 A D^-1/2`` (zero rows for isolated nodes)."""
    degree = adjacency.sum(1)
    if not normalized:
        return torch.diag(degree) - adjacency
    inv = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
    return torch.diag((degree > 0).to(adjacency.dtype)) - inv[:, None] * adjacency * inv[None, :]


def laplacian_smoothness(weights: torch.Tensor, adjacency: torch.Tensor, *, normalized: bool = False) -> torch.Tensor:
    """``tr(W^T L W)`` for rows ``W`` (``(C, D)``: class prototypes or classifier rows) and a ``(C, C)`` affinity.

    With ``L = D - A`` this equals ``sum_{i<j} A_ij ||w_i - w_j||^2``: related rows are pulled together in
    proportion to their affinity.
    """
    lap = laplacian(adjacency.to(weights.dtype), normalized=normalized)
    return torch.trace(weights.T @ lap @ weights)


@dataclass
class TransferPlan:
    """How each target class starts: ``matrix[t]`` mixes source classifier rows (rows sum to 1, or are all zero).

    Attributes:
        matrix: ``(num_target, num_source)``.
        how: per target class, ``"same"`` (it is a source class), ``"neighbours"`` (a weighted mean of related
            source classes) or ``"none"`` (no source class within reach; keeps its fresh initialisation).
        sources: per target class, ``[(source_class, weight), ...]``, heaviest first.
    """

    target_names: list[str]
    source_names: list[str]
    matrix: np.ndarray
    how: list[str] = field(default_factory=list)
    sources: list[list[tuple[str, float]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            name: {"how": how, "from": [[s, round(w, 6)] for s, w in srcs]}
            for name, how, srcs in zip(self.target_names, self.how, self.sources)
        }


def label_transfer_plan(
    kg: KnowledgeGraph,
    target_nodes: Sequence[str | None],
    source_nodes: Sequence[str | None],
    *,
    target_names: Sequence[str] | None = None,
    source_names: Sequence[str] | None = None,
    hops: int = 2,
    decay: float = 0.5,
    min_weight: float = 0.0,
) -> TransferPlan:
    """Which source classes each target class starts from.

    A target class linked to the same node as one or more source classes copies them (their mean). Otherwise its
    row is the :func:`relatedness` from its node to every source class's node, normalised to sum 1, with weights
    below ``min_weight`` (after normalising) dropped and the rest renormalised. Unlinked classes (node ``None``) and
    classes with no source class within ``hops`` get an all-zero row (``how == "none"``).
    """
    target_names = list(target_names or [str(n) for n in target_nodes])
    source_names = list(source_names or [str(n) for n in source_nodes])
    linked_sources = [n for n in source_nodes if n is not None]
    matrix = np.zeros((len(target_nodes), len(source_nodes)))
    how, sources = [], []
    walk = None
    reachable_targets = [n for n in target_nodes if n is not None]
    if reachable_targets and linked_sources:
        walk = dict(zip(reachable_targets, relatedness(kg, reachable_targets, linked_sources, hops=hops,
                                                       decay=decay)))
    source_cols = [j for j, n in enumerate(source_nodes) if n is not None]
    for t, node in enumerate(target_nodes):
        same = [j for j, s in enumerate(source_nodes) if s is not None and s == node]
        if node is not None and same:
            matrix[t, same] = 1.0 / len(same)
            how.append("same")
        elif node is not None and walk is not None and walk[node].sum() > 0:
            row = np.zeros(len(source_nodes))
            row[source_cols] = walk[node]
            row /= row.sum()
            row[row < min_weight] = 0.0
            if row.sum() > 0:
                matrix[t] = row / row.sum()
                how.append("neighbours")
            else:
                how.append("none")
        else:
            how.append("none")
        order = np.argsort(-matrix[t], kind="stable")
        sources.append([(source_names[j], float(matrix[t, j])) for j in order if matrix[t, j] > 0])
    return TransferPlan(target_names, source_names, matrix, how, sources)


@torch.no_grad()
def apply_transfer_plan(
    target_layer: torch.nn.Linear, source_weight: torch.Tensor, source_bias: torch.Tensor | None, plan: TransferPlan
) -> int:
    """Set the rows of a target classifier layer from the source classifier through ``plan``.

    Rows of classes with ``how == "none"`` keep their current (fresh) values. Returns how many rows were set.
    """
    if target_layer.weight.shape[0] != plan.matrix.shape[0] or source_weight.shape[0] != plan.matrix.shape[1]:
        raise UserError(
            f"label transfer: plan is {plan.matrix.shape} but the classifiers have {target_layer.weight.shape[0]} "
            f"target and {source_weight.shape[0]} source classes"
        )
    if target_layer.weight.shape[1] != source_weight.shape[1]:
        raise UserError(
            f"label transfer: the source classifier reads {source_weight.shape[1]} features, the target's "
            f"{target_layer.weight.shape[1]}; start the target from the source model (model_name_or_path)"
        )
    m = torch.as_tensor(plan.matrix, dtype=torch.float32)
    rows = [t for t, h in enumerate(plan.how) if h != "none"]
    if not rows:
        return 0
    mixed = m[rows] @ source_weight.float()
    target_layer.weight[rows] = mixed.to(target_layer.weight.dtype).to(target_layer.weight.device)
    if target_layer.bias is not None and source_bias is not None:
        bias = m[rows] @ source_bias.float()
        target_layer.bias[rows] = bias.to(target_layer.bias.dtype).to(target_layer.bias.device)
    return len(rows)
