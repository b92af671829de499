"""How far apart two domains are in a feature space: MMD with a permutation test, proxy A-distance, CORAL distance.

All three take source features ``(n_s, d)`` and target features ``(n_t, d)`` (numpy arrays or tensors) and need no
labels.

* :func:`mmd_test` — unbiased MMD^2 (Gretton et al. 2012, "A Kernel Two-Sample Test", JMLR 13, eq. 3) with a
  Gaussian kernel whose width comes from the median heuristic, and the p-value of the permutation test of
  "both samples come from one distribution". A small p-value says the gap is real, not sampling noise; MMD^2
  itself says how large it is (0 for no gap; at most 2 for this kernel).
* :func:`proxy_a_distance` — ``2 (1 - 2 err)`` where ``err`` is the held-out error of a domain classifier (Ben-David
  et al. 2007/2010, "A theory of learning from different domains"): 0 when the domains cannot be told apart, 2 when
  they are perfectly separable. The classifier is the logistic regression of
  :class:`~hf_transfer.instance.DensityRatioClassifier`, cross-fitted so every row is scored by a classifier that
  did not see it.
* :func:`coral_distance` — ``||C_s - C_t||_F^2 / (4 d^2)``, the Deep CORAL loss (Sun & Saenko 2016) on the whole
  sample: how different the second-order statistics are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..instance._base import check_pair
from ..instance._kernels import rbf_kernel, resolve_gamma


@dataclass
class MMDResult:
    """``mmd2``: unbiased MMD^2; ``p_value``: permutation-test p-value; ``gamma``: kernel width used
    (``k = exp(-gamma ||x - y||^2)``); ``num_permutations``; ``n_source``/``n_target``: rows used."""

    mmd2: float
    p_value: float
    gamma: float
    num_permutations: int
    n_source: int
    n_target: int

    def to_dict(self) -> dict:
        return asdict(self)


def _subsample(x: np.ndarray, max_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_samples is not None and len(x) > max_samples:
        return x[np.sort(rng.choice(len(x), max_samples, replace=False))]
    return x


def mmd2_from_kernel(kernel: np.ndarray, n_source: int) -> float:
    """Unbiased MMD^2 from the kernel matrix of the pooled rows (source rows first): the U-statistic with the
    diagonal terms of the within-domain blocks left out."""
    n, m = n_source, kernel.shape[0] - n_source
    kss, ktt, kst = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    xx = (kss.sum() - np.trace(kss)) / (n * (n - 1))
    yy = (ktt.sum() - np.trace(ktt)) / (m * (m - 1))
    return float(xx + yy - 2.0 * kst.mean())


def mmd_test(
    source,
    target,
    *,
    gamma: float | str = "median",
    num_permutations: int = 200,
    max_samples: int | None = 1000,
    seed: int = 0,
) -> MMDResult:
    """Unbiased MMD^2 between two samples and its permutation-test p-value.

    Args:
        gamma: a positive float, or ``"median"``: ``1 / median ||x - x'||^2`` over pooled pairs, the width rule of
            :func:`hf_transfer.instance._kernels.resolve_gamma` (so the same number as KMM's ``gamma="median"``).
        num_permutations: random relabellings of the pooled rows; the p-value is
            ``(1 + #{permuted MMD^2 >= observed}) / (1 + num_permutations)``, never 0 (Phipson & Smyth 2010).
            ``0`` skips the test (``p_value`` is NaN).
        max_samples: use at most this many rows per side (a seeded sample): the kernel matrix is quadratic.
    """
    xs, xt = check_pair(source, target)
    if len(xs) < 2 or len(xt) < 2:
        raise ValueError(f"mmd_test needs at least 2 rows per domain, got {len(xs)} source and {len(xt)} target")
    if num_permutations < 0:
        raise ValueError(f"num_permutations: must be >= 0, got {num_permutations}")
    rng = np.random.default_rng(seed)
    xs, xt = _subsample(xs, max_samples, rng), _subsample(xt, max_samples, rng)
    g = resolve_gamma(gamma, xs, xt, random_state=seed)
    pooled = np.vstack([xs, xt])
    kernel = rbf_kernel(pooled, pooled, g)
    n = len(xs)
    observed = mmd2_from_kernel(kernel, n)
    p_value = float("nan")
    if num_permutations:
        # Relabelling rows = permuting rows and columns of the one kernel matrix: no kernel is recomputed.
        exceed = 0
        for _ in range(num_permutations):
            perm = rng.permutation(len(pooled))
            exceed += mmd2_from_kernel(kernel[np.ix_(perm, perm)], n) >= observed
        p_value = (1 + exceed) / (1 + num_permutations)
    return MMDResult(observed, p_value, g, num_permutations, len(xs), len(xt))


@dataclass
class ADistanceResult:
    """``pad``: proxy A-distance ``2 (1 - 2 err)`` clipped to [0, 2]; ``error``: held-out domain-classifier error
    on a balanced sample; ``auc``: its held-out ROC AUC (0.5 = indistinguishable); ``n_per_domain``: rows per side."""

    pad: float
    error: float
    auc: float
    n_per_domain: int

    def to_dict(self) -> dict:
        return asdict(self)


def proxy_a_distance(
    source,
    target,
    *,
    C: float = 1.0,
    folds: int = 2,
    max_samples: int | None = 2000,
    seed: int = 0,
) -> ADistanceResult:
    """Proxy A-distance from the held-out error of a logistic-regression domain classifier.

    Both domains are subsampled to the same size (at most ``max_samples``) so that the error of a classifier that
    learned nothing is 0.5, whatever the original sizes; each row's domain is predicted by a classifier fitted on
    the other folds (``folds`` >= 2; 2 is the usual train/test split, used both ways).
    """
    from ..instance import DensityRatioClassifier

    xs, xt = check_pair(source, target)
    n = min(len(xs), len(xt), max_samples or len(xs))
    if n < folds:
        raise ValueError(f"proxy_a_distance needs at least {folds} rows per domain, got {min(len(xs), len(xt))}")
    rng = np.random.default_rng(seed)
    xs, xt = _subsample(xs, n, rng), _subsample(xt, n, rng)
    clf = DensityRatioClassifier(C=C, cv=folds, random_state=seed).fit(xs, xt)
    truth = np.r_[np.zeros(n), np.ones(n)]
    error = float(np.mean((clf.proba_target_ > 0.5) != truth))
    pad = float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))
    return ADistanceResult(pad, error, float(clf.domain_auc_), n)


def coral_distance(source, target) -> float:
    """``||Cov(source) - Cov(target)||_F^2 / (4 d^2)`` with unbiased covariances: the Deep CORAL loss
    (:func:`hf_transfer.methods.coral.coral_loss`) evaluated on the whole sample, in float64."""
    import torch

    from ..methods.coral import coral_loss

    xs, xt = check_pair(source, target)
    if len(xs) < 2 or len(xt) < 2:
        raise ValueError("coral_distance needs at least 2 rows per domain")
    return float(coral_loss(torch.from_numpy(xs), torch.from_numpy(xt)))


def domain_distances(
    source, target, *, num_permutations: int = 200, max_samples: int | None = 1000, seed: int = 0
) -> dict[str, float]:
    """All three distances as one flat dict: ``mmd2``, ``mmd_p_value``, ``mmd_gamma``, ``pad``,
    ``domain_error``, ``domain_auc``, ``coral``."""
    mmd = mmd_test(source, target, num_permutations=num_permutations, max_samples=max_samples, seed=seed)
    pad = proxy_a_distance(source, target, max_samples=max_samples, seed=seed)
    return {
        "mmd2": mmd.mmd2,
        "mmd_p_value": mmd.p_value,
        "mmd_gamma": mmd.gamma,
        "pad": pad.pad,
        "domain_error": pad.error,
        "domain_auc": pad.auc,
        "coral": coral_distance(source, target),
    }
