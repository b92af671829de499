"""Instance weighting without a neural backbone: precomputed features, a weighted scikit-learn classifier.

The classic shallow protocol (Office-Caltech10 SURF, bag-of-words sentiment): estimate source weights from the
unlabelled source and target features, then fit an ordinary classifier on the labelled source rows with
``sample_weight``. Example::

    from hf_transfer.instance.sklearn_path import fit_weighted_classifier, load_features

    Xs, ys = load_features("../shared/data/office_caltech10/amazon_surf.npz")
    Xt, yt = load_features("../shared/data/office_caltech10/webcam_surf.npz")
    Xs, Xt = preprocess_pair(Xs, Xt, "l1_zscore", stats="source")
    clf, w = fit_weighted_classifier(Xs, ys, Xt, estimator="kmm")
    print((clf.predict(Xt) == yt).mean())
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import has_fit_parameter

from ._base import ArrayLike, BaseWeighting, check_features, check_labels, check_pair
from .registry import get_weighting

PREPROCESSING = ("none", "zscore", "l2", "l1_zscore")


def _row_normalise(X: np.ndarray, method: str) -> np.ndarray:
    if method == "l2":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.where(norms > 0, norms, 1.0)
    if method == "l1_zscore":
        sums = np.abs(X).sum(1, keepdims=True)
        return X / np.where(sums > 0, sums, 1.0)
    return X


def _zscore(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    std = ref.std(0)
    return (X - ref.mean(0)) / np.where(std > 0, std, 1.0)


def preprocess_features(X: ArrayLike, method: str = "l1_zscore") -> np.ndarray:
    """Normalise one feature matrix with statistics from itself.

    Called once per domain this is the protocol of the shallow domain-adaptation literature on Office-Caltech10
    SURF (Gong et al. 2012 GFK, Long et al. 2013 JDA: histograms sum-normalised, each domain z-scored on its own).
    Beware: per-domain z-scoring aligns the mean and variance of every feature across domains, which blinds a
    *linear* domain classifier completely (its gradient at zero weights vanishes) and hides much of the shift
    KMM/KLIEP would correct. For instance weighting prefer :func:`preprocess_pair`, which uses one set of
    statistics for both domains.

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (n, d)
        Features.
    method : {"l1_zscore", "zscore", "l2", "none"}, default "l1_zscore"
        "l1_zscore": rows divided by their absolute sum (histograms -> frequencies), then columns standardised;
        "zscore": columns standardised (zero mean, unit variance; constant columns are only centred);
        "l2": rows scaled to unit Euclidean norm (the usual choice for embeddings and cosine geometry);
        "none": unchanged.

    Returns
    -------
    np.ndarray, shape (n, d), float64
    """
    if method not in PREPROCESSING:
        raise ValueError(f"method: unknown preprocessing {method!r}; choose one of {', '.join(PREPROCESSING)}")
    X = _row_normalise(check_features(X, "X"), method)
    return _zscore(X, X) if method in ("zscore", "l1_zscore") else X


def preprocess_pair(
    Xs: ArrayLike, Xt: ArrayLike, method: str = "l1_zscore", stats: str = "source"
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise source and target features with shared column statistics.

    Row-wise steps (l1, l2) need no statistics. Column z-scoring uses the mean and standard deviation of the
    source (``stats="source"``, the usual fit-on-training-data rule), of both domains pooled (``"pooled"``), or
    of each domain separately (``"per_domain"``, the GFK/JDA protocol; see the warning in
    :func:`preprocess_features`).

    Parameters
    ----------
    Xs : array-like or torch.Tensor, shape (n_s, d)
    Xt : array-like or torch.Tensor, shape (n_t, d)
    method : {"l1_zscore", "zscore", "l2", "none"}, default "l1_zscore"
    stats : {"source", "pooled", "per_domain"}, default "source"

    Returns
    -------
    Xs, Xt : np.ndarray of shapes (n_s, d) and (n_t, d), float64
    """
    if method not in PREPROCESSING:
        raise ValueError(f"method: unknown preprocessing {method!r}; choose one of {', '.join(PREPROCESSING)}")
    if stats not in ("source", "pooled", "per_domain"):
        raise ValueError(f"stats: unknown value {stats!r}; choose one of source, pooled, per_domain")
    Xs, Xt = check_pair(Xs, Xt)
    Xs, Xt = _row_normalise(Xs, method), _row_normalise(Xt, method)
    if method not in ("zscore", "l1_zscore"):
        return Xs, Xt
    if stats == "per_domain":
        return _zscore(Xs, Xs), _zscore(Xt, Xt)
    ref = Xs if stats == "source" else np.vstack([Xs, Xt])
    return _zscore(Xs, ref), _zscore(Xt, ref)


def load_features(path: str | Path, preprocess: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Load a ``.npz`` feature file with arrays ``x`` (n, d) and ``y`` (n,).

    Parameters
    ----------
    path : str or Path
        e.g. ``../shared/data/office_caltech10/amazon_surf.npz``.
    preprocess : str, default "none"
        Passed to :func:`preprocess_features` (statistics from this file only).

    Returns
    -------
    X : np.ndarray, shape (n, d), float64
    y : np.ndarray, shape (n,)
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file {str(path)!r}")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("x", "y") if k not in data.files]
        if missing:
            raise ValueError(f"path: {path.name} has no array(s) {missing}; found {data.files}")
        X, y = data["x"], data["y"]
    X = preprocess_features(X.reshape(X.shape[0], -1), preprocess)
    return X, check_labels(y, "y", X.shape[0])


def fit_weighted_classifier(
    Xs: ArrayLike,
    ys: ArrayLike,
    Xt: ArrayLike,
    estimator: str | BaseWeighting | None = "density_ratio",
    classifier=None,
    **kw,
):
    """Estimate source weights against the target, then fit a classifier on the weighted source.

    Parameters
    ----------
    Xs : array-like or torch.Tensor, shape (n_s, d)
        Labelled source features.
    ys : array-like, shape (n_s,)
        Source labels.
    Xt : array-like or torch.Tensor, shape (n_t, d)
        Unlabelled target features.
    estimator : str, BaseWeighting or None, default "density_ratio"
        A registry name (see :func:`~hf_transfer.instance.get_weighting`), an estimator instance (cloned), or
        None for uniform weights (the source-only baseline).
    classifier : scikit-learn classifier or None
        Its ``fit`` must accept ``sample_weight``; cloned. None: ``LogisticRegression(max_iter=2000)``.
    **kw
        Constructor arguments for ``estimator`` when it is given by name.

    Returns
    -------
    classifier : fitted estimator
    weights : np.ndarray, shape (n_s,)
        The source weights used.
    """
    Xs, Xt = check_pair(Xs, Xt)
    ys = check_labels(ys, "ys", Xs.shape[0])
    if estimator is None:
        if kw:
            raise ValueError(f"estimator=None takes no arguments, got {sorted(kw)}")
        weights = np.ones(Xs.shape[0])
    elif isinstance(estimator, str):
        weights = get_weighting(estimator, **kw).fit_weights(Xs, Xt)
    elif isinstance(estimator, BaseWeighting):
        if kw:
            raise ValueError("pass arguments to the estimator instance itself, not as **kw")
        weights = clone(estimator).fit_weights(Xs, Xt)
    else:
        raise ValueError(f"estimator: expected a name, a BaseWeighting or None, got {type(estimator).__name__}")
    clf = LogisticRegression(max_iter=2000) if classifier is None else clone(classifier)
    if not has_fit_parameter(clf, "sample_weight"):
        raise ValueError(f"classifier: {type(clf).__name__}.fit does not accept sample_weight")
    clf.fit(Xs, ys, sample_weight=weights)
    return clf, weights
