"""Gaussian (RBF) kernels: the width heuristics, blocked exact kernels and the two low-rank feature maps.

``k(x, y) = exp(-gamma * ||x - y||^2)`` throughout, the scikit-learn parametrisation, so that a ``gamma`` here means
the same as ``sklearn.metrics.pairwise.rbf_kernel(gamma=...)`` and skada's ``gamma``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.utils import check_random_state

GammaSpec = float | str | None


def _sq_dists(A: np.ndarray, B: np.ndarray, A_sq: np.ndarray | None = None, B_sq: np.ndarray | None = None):
    """Squared Euclidean distances (n_a, n_b) by the ``|a|^2 - 2ab + |b|^2`` expansion (one GEMM)."""
    A_sq = (A * A).sum(1) if A_sq is None else A_sq
    B_sq = (B * B).sum(1) if B_sq is None else B_sq
    d = A @ B.T
    d *= -2.0
    d += A_sq[:, None]
    d += B_sq[None, :]
    np.maximum(d, 0.0, out=d)  # the expansion can go slightly negative by cancellation
    return d


def rbf_kernel(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """Dense RBF kernel matrix ``exp(-gamma ||a_i - b_j||^2)``, shape (n_a, n_b), in the dtype of ``A``."""
    d = _sq_dists(A, B)
    d *= -gamma
    return np.exp(d, out=d)


def row_blocks(n: int, batch_size: int) -> Iterator[slice]:
    """Yield slices ``[i, i + batch_size)`` covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def rbf_kernel_row_means(A: np.ndarray, B: np.ndarray, gamma: float, batch_size: int = 2048) -> np.ndarray:
    """``mean_j k(a_i, b_j)`` for every row of ``A``, shape (n_a,), never holding more than a (batch, n_b) block."""
    B_sq = (B * B).sum(1)
    out = np.empty(A.shape[0], dtype=np.float64)
    for sl in row_blocks(A.shape[0], batch_size):
        K = _sq_dists(A[sl], B, B_sq=B_sq)
        K *= -gamma
        np.exp(K, out=K)
        out[sl] = K.mean(1)
    return out


def median_sq_distance(X: np.ndarray, max_samples: int = 1000, random_state=None) -> float:
    """Median squared Euclidean distance between distinct rows of ``X`` (on a random subsample of rows)."""
    rng = check_random_state(random_state)
    if X.shape[0] > max_samples:
        X = X[rng.choice(X.shape[0], max_samples, replace=False)]
    d = _sq_dists(X, X)
    iu = np.triu_indices(X.shape[0], k=1)
    vals = d[iu]
    vals = vals[vals > 0]
    return float(np.median(vals)) if vals.size else 1.0


def pooled_rows(Xs: np.ndarray, Xt: np.ndarray, m: int, random_state=None) -> np.ndarray:
    """``m`` rows drawn without replacement from the pooled source and target rows, without stacking the two
    (stacking 2 x 20,000 x 384 float64 rows would cost 120 MB just to pick a few hundred)."""
    rng = check_random_state(random_state)
    n_s, n = Xs.shape[0], Xs.shape[0] + Xt.shape[0]
    idx = np.sort(rng.choice(n, min(m, n), replace=False))
    return np.vstack([Xs[idx[idx < n_s]], Xt[idx[idx >= n_s] - n_s]])


def resolve_gamma(gamma: GammaSpec, Xs: np.ndarray, Xt: np.ndarray, random_state=None) -> float:
    """Turn a width specification into a number.

    Parameters
    ----------
    gamma : float, "median", "scale", "auto" or None
        A positive float is used as is. ``"median"`` (the median heuristic, the usual choice for kernel two-sample
        and KMM work): ``gamma = 1 / median(||x - x'||^2)`` over pairs of pooled rows (a random subsample of 1000),
        i.e. bandwidth ``sigma = median distance / sqrt(2)``. ``"scale"``: scikit-learn's SVC rule
        ``1 / (d * var)`` with the variance of all pooled entries. ``"auto"`` or None: ``1 / d`` (scikit-learn's
        and skada's default when gamma is None).
    Xs, Xt : np.ndarray, shapes (n_s, d) and (n_t, d)
        Source and target rows; the heuristics look at both.
    random_state : int, RandomState or None
        Seeds the row subsample of the median heuristic.

    Returns
    -------
    float
    """
    d = Xs.shape[1]
    if gamma is None or gamma == "auto":
        return 1.0 / d
    if gamma == "median":
        return 1.0 / median_sq_distance(pooled_rows(Xs, Xt, 1000, random_state))
    if gamma == "scale":
        count = (Xs.shape[0] + Xt.shape[0]) * d
        mean = (Xs.sum(dtype=np.float64) + Xt.sum(dtype=np.float64)) / count
        var = float((np.square(Xs).sum(dtype=np.float64) + np.square(Xt).sum(dtype=np.float64)) / count - mean**2)
        return 1.0 / (d * var) if var > 0 else 1.0
    if isinstance(gamma, str):
        raise ValueError(f"gamma: unknown value {gamma!r}; use a positive float, 'median', 'scale' or 'auto'")
    gamma = float(gamma)
    if not gamma > 0:
        raise ValueError(f"gamma: must be positive, got {gamma}")
    return gamma


class RandomFourierFeatures:
    """Random Fourier features for the RBF kernel (Rahimi & Recht, 2007).

    ``z(x) = sqrt(2 / D) cos(W^T x + b)`` with ``W ~ N(0, 2 gamma I)``, ``b ~ U[0, 2 pi)``, so that
    ``E[z(x) . z(y)] = exp(-gamma ||x - y||^2)``; the error of the inner product falls as ``1 / sqrt(D)``.
    """

    def __init__(self, gamma: float, n_components: int, random_state=None, dtype=np.float32):
        self.gamma, self.n_components, self.random_state, self.dtype = gamma, n_components, random_state, dtype

    def fit(self, X: np.ndarray) -> RandomFourierFeatures:
        rng = check_random_state(self.random_state)
        d = X.shape[1]
        self.W_ = (rng.standard_normal((d, self.n_components)) * np.sqrt(2.0 * self.gamma)).astype(self.dtype)
        self.b_ = rng.uniform(0.0, 2.0 * np.pi, self.n_components).astype(self.dtype)
        return self

    def transform(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        out = np.empty((X.shape[0], self.n_components), dtype=self.dtype)
        scale = self.dtype(np.sqrt(2.0 / self.n_components))
        for sl in row_blocks(X.shape[0], batch_size):
            Z = X[sl].astype(self.dtype, copy=False) @ self.W_
            Z += self.b_
            np.cos(Z, out=Z)
            Z *= scale
            out[sl] = Z
        return out


class NystroemFeatures:
    """Nystroem feature map for the RBF kernel (Williams & Seeger, 2001).

    With ``m`` landmark rows ``L``, ``z(x) = K(x, L) U diag(1/sqrt(s))`` where ``K(L, L) = U diag(s) U^T``, so
    ``z(x) . z(y)`` is the kernel projected on the span of the landmarks. On clustered data (embeddings, bag-of-words)
    it needs far fewer components than random Fourier features for the same accuracy, hence the default.
    """

    def __init__(self, gamma: float, n_components: int, random_state=None, dtype=np.float32):
        self.gamma, self.n_components, self.random_state, self.dtype = gamma, n_components, random_state, dtype

    def fit(self, X: np.ndarray) -> NystroemFeatures:
        rng = check_random_state(self.random_state)
        m = min(self.n_components, X.shape[0])
        self.landmarks_ = X[rng.choice(X.shape[0], m, replace=False)].astype(self.dtype)
        K = rbf_kernel(self.landmarks_.astype(np.float64), self.landmarks_.astype(np.float64), self.gamma)
        s, U = np.linalg.eigh(K)
        # Drop directions the landmarks do not resolve: dividing by tiny eigenvalues only amplifies round-off.
        keep = s > s.max() * 1e-8
        self.projection_ = (U[:, keep] / np.sqrt(s[keep])).astype(self.dtype)
        self.landmarks_sq_ = (self.landmarks_.astype(np.float64) ** 2).sum(1).astype(self.dtype)
        return self

    def transform(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        out = np.empty((X.shape[0], self.projection_.shape[1]), dtype=self.dtype)
        for sl in row_blocks(X.shape[0], batch_size):
            K = _sq_dists(X[sl].astype(self.dtype, copy=False), self.landmarks_, B_sq=self.landmarks_sq_)
            K *= -self.dtype(self.gamma)
            np.exp(K, out=K)
            out[sl] = K @ self.projection_
        return out
