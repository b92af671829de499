"""Common base for instance-weighting estimators: input checks, the ``fit`` / ``weights_`` contract, summaries.

Every estimator here answers one question: given unlabelled source features ``Xs`` (n_s, d) and target features
``Xt`` (n_t, d), how much should each source row count so that the re-weighted source looks like the target? The
answer is ``weights_``, a float64 array of shape (n_s,), non-negative, one weight per source row.

Inputs may be NumPy arrays, anything ``np.asarray`` accepts, or torch tensors. Tensors are detached and copied to
host memory once, at the start of ``fit``: the solvers are NumPy/BLAS code, which on CPU is as fast as torch for
these sizes, and the result has to be a NumPy array for scikit-learn's ``sample_weight`` anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

ArrayLike = Any  # np.ndarray, torch.Tensor, or nested sequences of numbers


def _is_torch_tensor(x: object) -> bool:
    # Duck-typed so that importing this module never imports torch (two seconds on a cold start).
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as a NumPy array (tensors are detached and moved to the CPU; bfloat16 becomes float32).

    Parameters
    ----------
    x : array-like or torch.Tensor
        The input.
    name : str
        Argument name used in error messages.

    Returns
    -------
    np.ndarray
    """
    if _is_torch_tensor(x):
        t = x.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):
            # NumPy has no bfloat16; half precision is too coarse for the solvers' sums.
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise ValueError(f"{name}: could not be converted to an array ({exc})") from exc


def check_features(x: ArrayLike, name: str, *, dtype: type = np.float64) -> np.ndarray:
    """Validate one feature matrix and return it as a C-contiguous float array of shape (n, d).

    Parameters
    ----------
    x : array-like or torch.Tensor, shape (n, d)
        Feature matrix, one row per example.
    name : str
        Argument name used in error messages (``"Xs"``, ``"Xt"``...).
    dtype : numpy dtype, default float64
        Floating type of the returned array.

    Returns
    -------
    np.ndarray, shape (n, d)

    Raises
    ------
    ValueError
        If ``x`` is not 2-D, has no rows or no columns, is not numeric, or holds NaN or infinity.
    """
    arr = as_numpy(x, name)
    if arr.ndim != 2:
        hint = " (reshape a single feature with x.reshape(-1, 1))" if arr.ndim == 1 else ""
        raise ValueError(f"{name}: expected a 2-D array of shape (n_samples, n_features), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: is empty (0 rows); at least one row is needed")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: has 0 features (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name}: expected numeric features, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name}: contains NaN or infinity in {n_bad} row(s); clean or impute the features first")
    return arr


def check_pair(Xs: ArrayLike, Xt: ArrayLike, *, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Validate a source/target pair of feature matrices (each as :func:`check_features`, same feature count).

    Parameters
    ----------
    Xs : array-like or torch.Tensor, shape (n_s, d)
        Source features.
    Xt : array-like or torch.Tensor, shape (n_t, d)
        Target features.
    dtype : numpy dtype, default float64
        Floating type of the returned arrays.

    Returns
    -------
    Xs, Xt : np.ndarray of shapes (n_s, d) and (n_t, d)
    """
    Xs = check_features(Xs, "Xs", dtype=dtype)
    Xt = check_features(Xt, "Xt", dtype=dtype)
    if Xs.shape[1] != Xt.shape[1]:
        raise ValueError(
            f"Xs and Xt must have the same number of features: Xs has {Xs.shape[1]}, Xt has {Xt.shape[1]}"
        )
    return Xs, Xt


def check_labels(y: ArrayLike, name: str, n_rows: int) -> np.ndarray:
    """Validate a label vector of length ``n_rows`` and return it as a 1-D NumPy array."""
    arr = as_numpy(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D label vector, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"{name}: has {arr.shape[0]} labels but the features have {n_rows} rows")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinity")
    return arr


def check_weights(w: ArrayLike, name: str = "w") -> np.ndarray:
    """Validate a weight vector: 1-D, non-empty, finite, non-negative. Returns float64."""
    arr = as_numpy(w, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D weight vector, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name}: expected numeric weights, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size == 0:
        raise ValueError(f"{name}: is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinity")
    if (arr < 0).any():
        raise ValueError(f"{name}: weights must be non-negative (min is {arr.min():.3g})")
    return arr


def effective_sample_size(w: ArrayLike) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``.

    It equals ``n`` for uniform weights and 1 when one row carries all the weight, so ``ess / n`` says how much
    of the source sample a weighted loss really uses; below ~10% the weighted estimate is mostly noise.

    Parameters
    ----------
    w : array-like, shape (n,)
        Non-negative weights.

    Returns
    -------
    float
        The effective sample size, in ``[1, n]`` (0.0 if all weights are zero).
    """
    w = check_weights(w)
    sq = float(np.dot(w, w))
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def weight_summary(w: ArrayLike) -> dict[str, float]:
    """Summary statistics of a weight vector, for logging.

    Parameters
    ----------
    w : array-like, shape (n,)
        Non-negative weights.

    Returns
    -------
    dict
        ``n``, ``ess`` (see :func:`effective_sample_size`), ``ess_ratio`` (``ess / n``), ``mean``, ``min``,
        ``max``, ``n_zero`` (rows with weight exactly 0), all plain Python numbers.
    """
    w = check_weights(w)
    ess = effective_sample_size(w)
    return {
        "n": int(w.size),
        "ess": ess,
        "ess_ratio": ess / w.size,
        "mean": float(w.mean()),
        "min": float(w.min()),
        "max": float(w.max()),
        "n_zero": int((w == 0).sum()),
    }


def normalize_mean_one(w: np.ndarray, max_weight: float | None = None) -> np.ndarray:
    """Scale ``w`` to mean 1, capping weights at ``max_weight`` while keeping the mean exactly 1.

    Capping then rescaling would push the capped rows above the cap again, so the scale ``c`` is solved for
    directly: ``mean(min(c * w, max_weight)) = 1`` (monotone in ``c``; found exactly from the sorted weights).

    Parameters
    ----------
    w : np.ndarray, shape (n,)
        Non-negative raw weights, at least one positive.
    max_weight : float or None
        Cap on the final weights; must be >= 1 (a mean of 1 is impossible otherwise). None: no cap.

    Returns
    -------
    np.ndarray, shape (n,)
    """
    w = np.asarray(w, dtype=np.float64)
    total = w.sum()
    if total <= 0:
        raise ValueError("all weights are zero; cannot normalise them to mean 1")
    out = w * (w.size / total)
    if max_weight is None or out.max() <= max_weight:
        return out
    n = w.size
    if max_weight * np.count_nonzero(w) < n:
        raise ValueError(
            f"max_weight={max_weight} is too small: with {np.count_nonzero(w)} non-zero weights out of {n} the mean "
            "cannot reach 1 (need max_weight >= n / n_nonzero)"
        )
    # With the k largest rows capped, the rest scale by c = (n - k * M) / sum(rest); pick the smallest k for
    # which the largest uncapped row stays under the cap.
    order = np.argsort(w)[::-1]
    ws = w[order]
    rest = np.cumsum(ws[::-1])[::-1]  # rest[k] = sum of ws[k:]
    for k in range(1, n):
        c = (n - k * max_weight) / rest[k]
        if c * ws[k] <= max_weight * (1 + 1e-12):
            break
    else:  # every row capped: only possible when max_weight == 1
        return np.ones_like(w)
    out = np.minimum(w * c, max_weight)
    out[order[:k]] = max_weight
    return out


class BaseWeighting(BaseEstimator):
    """Base class of the source-reweighting estimators (scikit-learn conventions).

    Subclasses implement ``_fit(Xs, Xt)`` on validated float64 arrays and return the weights; the base class
    checks the inputs, stores ``weights_`` and offers :meth:`fit_weights` and :meth:`summary`.

    Attributes
    ----------
    weights_ : np.ndarray, shape (n_s,)
        Non-negative float64 weight of each source row, set by :meth:`fit`.
    n_features_in_ : int
        Number of features seen in ``fit``.
    """

    def fit(self, Xs: ArrayLike, Xt: ArrayLike) -> BaseWeighting:
        """Estimate one weight per source row.

        Parameters
        ----------
        Xs : array-like or torch.Tensor, shape (n_s, d)
            Source features (the rows to weight).
        Xt : array-like or torch.Tensor, shape (n_t, d)
            Target features (unlabelled).

        Returns
        -------
        self
        """
        Xs, Xt = check_pair(Xs, Xt)
        self.n_features_in_ = Xs.shape[1]
        w = np.asarray(self._fit(Xs, Xt), dtype=np.float64)
        if w.shape != (Xs.shape[0],) or not np.isfinite(w).all() or (w < 0).any():
            raise RuntimeError(f"{type(self).__name__} produced invalid weights (shape {w.shape}); this is a bug")
        self.weights_ = w
        return self

    def fit_weights(self, Xs: ArrayLike, Xt: ArrayLike) -> np.ndarray:
        """Fit and return ``weights_`` (the ``fit_transform`` of this family).

        Parameters
        ----------
        Xs : array-like or torch.Tensor, shape (n_s, d)
            Source features.
        Xt : array-like or torch.Tensor, shape (n_t, d)
            Target features.

        Returns
        -------
        np.ndarray, shape (n_s,)
            The source weights.
        """
        return self.fit(Xs, Xt).weights_

    def summary(self) -> dict[str, float]:
        """:func:`weight_summary` of the fitted weights (ESS, min, max, mean...)."""
        if not hasattr(self, "weights_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit(Xs, Xt) first")
        return weight_summary(self.weights_)

    def _fit(self, Xs: np.ndarray, Xt: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError
