"""Nearest-neighbour selection and weighting of source rows in an embedding space."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ._base import BaseWeighting, normalize_mean_one
from ._kernels import row_blocks

_METRICS = ("cosine", "euclidean")
_MODES = ("count", "top_fraction")


def _prepare(X: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows in float32 (cosine: unit-normalised) and their squared norms, for distance-by-GEMM."""
    X = X.astype(np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)  # a zero row has cosine similarity 0 with everything
    return X, (X * X).sum(1)


def knn_search(
    Q: np.ndarray, R: np.ndarray, k: int, metric: str, batch_size: int = 256, verbose: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``R`` for every row of ``Q`` by blocked brute force.

    Parameters
    ----------
    Q : np.ndarray, shape (n_q, d)
        Query rows.
    R : np.ndarray, shape (n_r, d)
        Reference rows.
    k : int
        Neighbours per query (``k <= n_r``).
    metric : {"cosine", "euclidean"}
        Cosine distance ``1 - cos`` or Euclidean distance.
    batch_size : int
        Query rows per block; peak extra memory is ``4 * batch_size * n_r`` bytes.
    verbose : bool
        tqdm progress over blocks.

    Returns
    -------
    dist : np.ndarray, shape (n_q, k)
        Distances, ascending along each row.
    idx : np.ndarray, shape (n_q, k)
        Indices into ``R``.
    """
    if metric == "euclidean":
        # Distances are shift-invariant; centring first shrinks the norms in |q|^2 - 2 q.r + |r|^2 and with them
        # the float32 cancellation error.
        center = R.mean(0)
        Q, R = Q - center, R - center
    Qp, Q_sq = _prepare(Q, metric)
    Rp, R_sq = _prepare(R, metric)
    n_q = Qp.shape[0]
    dist = np.empty((n_q, k), dtype=np.float64)
    idx = np.empty((n_q, k), dtype=np.int64)
    blocks = list(row_blocks(n_q, batch_size))
    for sl in tqdm(blocks, desc="kNN", disable=not verbose, leave=False):
        G = Qp[sl] @ Rp.T
        if metric == "cosine":
            D = 1.0 - G
        else:  # squared distances; the square root is taken on the k kept values only
            D = Q_sq[sl, None] - 2.0 * G + R_sq[None, :]
        if k < D.shape[1]:
            part = np.argpartition(D, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(D.shape[1]), D.shape)
        dk = np.take_along_axis(D, part, axis=1)
        order = np.argsort(dk, axis=1, kind="stable")
        idx[sl] = np.take_along_axis(part, order, axis=1)
        dist[sl] = np.take_along_axis(dk, order, axis=1)
    if metric == "euclidean":
        dist = np.sqrt(np.maximum(dist, 0.0))
    else:
        dist = np.maximum(dist, 0.0)
    return dist, idx


class NearestNeighborSelection(BaseWeighting):
    """Keep or up-weight the source rows that lie close to the target in embedding space.

    Two modes:

    - ``mode="count"`` (Loog, 2012, "nearest neighbor-based importance weighting"): every target row votes for its
      ``n_neighbors`` nearest source rows; a source row's weight is the number of votes it gets plus
      ``smoothing``, scaled to mean 1. The vote count is a nearest-neighbour estimate of ``p_t / p_s`` at that
      row; source rows no target row picks get weight ``smoothing`` (0 by default: dropped).
    - ``mode="top_fraction"``: score each source row by its mean distance to its ``n_neighbors`` nearest target
      rows and keep the closest ``fraction`` of the source; kept rows share the weight equally (mean 1 over all
      rows, so each kept row has weight ``1 / fraction``), the others get 0. This is data selection: pick the
      source data that looks like the target, then train as usual.

    Search is exact brute force in float32 blocks (one GEMM per block), which for embeddings of a few hundred
    dimensions is fast up to ~1e5 x 1e5 rows on a CPU; distances carry float32 round-off (~1e-5 relative to the
    feature norms), which only matters for near-ties.

    Parameters
    ----------
    metric : {"cosine", "euclidean"}, default "cosine"
        Cosine suits sentence / image embeddings; euclidean suits standardised tabular features.
    mode : {"count", "top_fraction"}, default "count"
    n_neighbors : int, default 1
        Neighbours per target row (count) or per source row (top_fraction).
    fraction : float, default 0.5
        Share of source rows kept in "top_fraction" mode, in (0, 1].
    smoothing : float, default 0.0
        Added to every vote count in "count" mode (Laplace smoothing; 1 keeps every source row with some weight).
    batch_size : int, default 256
        Query rows per distance block.
    verbose : bool, default False
        Progress bar over blocks.

    Attributes
    ----------
    weights_ : np.ndarray, shape (n_s,)
        Mean-1 weights.
    counts_ : np.ndarray, shape (n_s,)
        Votes per source row ("count" mode).
    scores_ : np.ndarray, shape (n_s,)
        Mean distance to the nearest target rows ("top_fraction" mode; lower = closer to the target).
    selected_ : np.ndarray of bool, shape (n_s,)
        Rows with non-zero weight.
    """

    def __init__(
        self,
        *,
        metric: str = "cosine",
        mode: str = "count",
        n_neighbors: int = 1,
        fraction: float = 0.5,
        smoothing: float = 0.0,
        batch_size: int = 256,
        verbose: bool = False,
    ):
        self.metric = metric
        self.mode = mode
        self.n_neighbors = n_neighbors
        self.fraction = fraction
        self.smoothing = smoothing
        self.batch_size = batch_size
        self.verbose = verbose

    def _fit(self, Xs: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        if self.metric not in _METRICS:
            raise ValueError(f"metric: unknown value {self.metric!r}; choose one of {', '.join(_METRICS)}")
        if self.mode not in _MODES:
            raise ValueError(f"mode: unknown value {self.mode!r}; choose one of {', '.join(_MODES)}")
        if self.n_neighbors < 1:
            raise ValueError(f"n_neighbors: must be at least 1, got {self.n_neighbors}")
        if self.smoothing < 0:
            raise ValueError(f"smoothing: must be non-negative, got {self.smoothing}")
        n_s = Xs.shape[0]
        if self.mode == "count":
            k = min(self.n_neighbors, n_s)
            _, idx = knn_search(Xt, Xs, k, self.metric, self.batch_size, self.verbose)
            self.counts_ = np.bincount(idx.ravel(), minlength=n_s).astype(np.float64)
            w = normalize_mean_one(self.counts_ + self.smoothing)
        else:
            if not 0 < self.fraction <= 1:
                raise ValueError(f"fraction: must be in (0, 1], got {self.fraction}")
            k = min(self.n_neighbors, Xt.shape[0])
            dist, _ = knn_search(Xs, Xt, k, self.metric, self.batch_size, self.verbose)
            self.scores_ = dist.mean(1)
            n_keep = max(1, int(round(self.fraction * n_s)))
            keep = np.argsort(self.scores_, kind="stable")[:n_keep]
            w = np.zeros(n_s)
            w[keep] = n_s / n_keep
        self.selected_ = w > 0
        return w
