"""Node embeddings from the graph structure alone, with numpy/scipy on networkx's adjacency (no extra dependency).

* :func:`spectral_embedding` — Laplacian eigenmaps (Belkin & Niyogi 2003): the generalised eigenvectors
  ``L v = lambda D v`` of the smallest non-trivial eigenvalues, ``L = D - A``.
* :func:`random_walk_embedding` — NetMF (Qiu et al. 2018, "Network Embedding as Matrix Factorization", the closed
  form of DeepWalk): truncated SVD of ``log max(M, 1)``, ``M = vol(G) / (b T) * (sum_{r=1..T} P^r) D^-1`` with
  ``P = D^-1 A`` the random-walk matrix, ``T`` the window and ``b`` the number of negative samples.

Both read the graph undirected and simple (:meth:`KnowledgeGraph.adjacency`); isolated nodes get zero rows.
Eigenvector signs are fixed (the entry of largest magnitude is positive) so results are reproducible.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import UserError
from .graph import KnowledgeGraph

#: Above this many nodes, spectral_embedding uses a sparse eigensolver instead of a dense one.
DENSE_LIMIT = 2000
#: NetMF builds a dense n x n matrix; beyond this it is refused (use spectral_embedding for large graphs).
NETMF_LIMIT = 10000


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    idx = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _check_dim(dim: int, n: int, *, need: int) -> None:
    if dim < 1:
        raise UserError(f"dim: must be >= 1, got {dim}")
    if dim + need > n:
        raise UserError(f"dim: {dim} is too large for a graph of {n} nodes (at most {n - need})")


def spectral_embedding(
    kg: KnowledgeGraph, dim: int = 16, *, nodes: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Laplacian-eigenmap coordinates, shape ``(n, dim)``, and the node order of the rows.

    Solved through the symmetric normalised form: ``N = D^-1/2 A D^-1/2`` has eigenvectors ``u`` with
    eigenvalues ``1 - lambda``; ``v = D^-1/2 u`` solves ``L v = lambda D v``. The trivial ``lambda = 0`` vector is
    dropped. The matching eigenvalues are :func:`spectral_eigenvalues`.
    """
    _, vectors, order = _spectral(kg, dim, nodes)
    return vectors, order


def spectral_eigenvalues(kg: KnowledgeGraph, dim: int = 16, *, nodes: list[str] | None = None) -> np.ndarray:
    """The ``dim`` generalised eigenvalues ``lambda`` (ascending) matching :func:`spectral_embedding`'s columns."""
    values, _, _ = _spectral(kg, dim, nodes)
    return values


def _spectral(kg: KnowledgeGraph, dim: int, nodes: list[str] | None):
    adjacency, order = kg.adjacency(nodes)
    n = adjacency.shape[0]
    _check_dim(dim, n, need=1)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = 1.0 / np.sqrt(degree[degree > 0])
    scale = sp.diags(inv_sqrt)
    normalised = (scale @ adjacency @ scale).tocsr()
    k = dim + 1
    if n <= DENSE_LIMIT:
        mu, u = np.linalg.eigh(normalised.toarray())
        mu, u = mu[::-1][:k], u[:, ::-1][:, :k]
    else:
        # Largest algebraic eigenvalues of N are the smallest of the normalised Laplacian; a fixed start vector keeps
        # ARPACK deterministic. tol 1e-6 (not machine precision): coordinates need no more, and graphs without
        # community structure have a crowded spectrum on which full precision takes many more iterations.
        v0 = np.full(n, 1.0 / np.sqrt(n))
        mu, u = spla.eigsh(normalised, k=k, which="LA", v0=v0, tol=1e-6)
        order_idx = np.argsort(-mu)
        mu, u = mu[order_idx], u[:, order_idx]
    vectors = _fix_signs(inv_sqrt[:, None] * u[:, 1:])
    return 1.0 - mu[1:], vectors, order


def random_walk_embedding(
    kg: KnowledgeGraph, dim: int = 16, *, window: int = 5, negative: float = 1.0, nodes: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """NetMF coordinates (DeepWalk's matrix, factorised exactly), shape ``(n, dim)``, and the row order.

    Args:
        window: ``T``, the skip-gram window of the walks.
        negative: ``b``, the number of negative samples.
    """
    if window < 1:
        raise UserError(f"window: must be >= 1, got {window}")
    if negative <= 0:
        raise UserError(f"negative: must be > 0, got {negative}")
    adjacency, order = kg.adjacency(nodes)
    n = adjacency.shape[0]
    if n > NETMF_LIMIT:
        raise UserError(f"random_walk_embedding: {n} nodes is more than {NETMF_LIMIT} (a dense n x n matrix); "
                        "use spectral_embedding for large graphs")
    _check_dim(dim, n, need=0)
    matrix = netmf_matrix(adjacency, window=window, negative=negative)
    u, s, _ = np.linalg.svd(np.log(np.maximum(matrix, 1.0)))
    return _fix_signs(u[:, :dim] * np.sqrt(s[:dim])), order


def netmf_matrix(adjacency: sp.spmatrix | np.ndarray, *, window: int, negative: float) -> np.ndarray:
    """``M = vol(G) / (b T) * (sum_{r=1..T} P^r) D^-1`` (dense), with zero rows/columns for isolated nodes."""
    a = adjacency.toarray() if sp.issparse(adjacency) else np.asarray(adjacency, dtype=np.float64)
    degree = a.sum(axis=1)
    inv = np.zeros_like(degree)
    inv[degree > 0] = 1.0 / degree[degree > 0]
    p = inv[:, None] * a
    power, total = np.eye(len(a)), np.zeros_like(a)
    for _ in range(window):
        power = power @ p
        total += power
    return degree.sum() / (negative * window) * total * inv[None, :]
