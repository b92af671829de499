"""Transferability scores: how well a pretrained model (or a source domain) will do on a labelled target task,
estimated without fine-tuning. Every score is higher-is-better.

===========  =====================================================================  ==================================
score        reads                                                                  paper
===========  =====================================================================  ==================================
``logme``    target features ``(n, d)`` and target labels                           You et al. 2021, ICML ("LogME")
``hscore``   target features and target labels                                      Bao et al. 2019, ICIP ("H-score")
``leep``     the source classifier's probabilities on the target rows, labels       Nguyen et al. 2020, ICML ("LEEP")
``nce``      the source classifier's hard predictions on the target rows, labels    Tran et al. 2019, ICCV ("NCE")
===========  =====================================================================  ==================================

LogME and H-score score a *feature extractor*: rank several backbones by running each over the same labelled
target sample. LEEP and NCE score a *source classifier* (its label space may differ from the target's): rank source
domains by training a cheap classifier on each source (:func:`source_classifier_outputs`, a logistic regression on
frozen features) and scoring its outputs on the target rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..instance._base import check_features, check_labels

SCORES = ("logme", "leep", "hscore", "nce")


def _labels(labels, n: int) -> np.ndarray:
    y = check_labels(labels, "labels", n)
    if y.min() < 0:
        raise ValueError("labels: must be non-negative class ids")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# LogME
# ---------------------------------------------------------------------------------------------------------------


def logme_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Log marginal likelihood ``log p(y | F, alpha, beta)`` of Bayesian linear regression ``y = F w + e`` with
    prior ``w ~ N(0, I / alpha)`` and noise ``e ~ N(0, I / beta)`` (LogME eq. 2), by the closed form with
    ``A = alpha I + beta F^T F`` and ``m = beta A^-1 F^T y``."""
    n, d = features.shape
    a = alpha * np.eye(d) + beta * features.T @ features
    m = beta * np.linalg.solve(a, features.T @ y)
    residual = float(np.sum((features @ m - y) ** 2))
    _, logdet = np.linalg.slogdet(a)
    return float(
        n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual - alpha / 2 * float(m @ m) - logdet / 2
    )


def _logme_one(u: np.ndarray, s2: np.ndarray, y: np.ndarray, n: int, d: int, tol: float, max_iter: int):
    """Maximise the evidence over (alpha, beta) by MacKay's fixed-point updates in the eigenbasis of ``F^T F``.

    ``u``: left singular vectors (n, r) of F; ``s2``: the r non-zero squared singular values. Returns
    ``(evidence / n, alpha, beta)``."""
    z = u.T @ y  # y's coordinates in F's column space
    y_perp = float(y @ y - z @ z)  # the part of y no linear map of F can reach
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma = float(np.sum(beta * s2 / (alpha + beta * s2)))
        m2 = float(np.sum(beta**2 * s2 * z**2 / (alpha + beta * s2) ** 2))  # ||m||^2
        res = float(np.sum((alpha * z / (alpha + beta * s2)) ** 2)) + y_perp  # ||F m - y||^2
        new_alpha = gamma / max(m2, 1e-300)
        new_beta = max(n - gamma, 1e-12) / max(res, 1e-300)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m2 = float(np.sum(beta**2 * s2 * z**2 / (alpha + beta * s2) ** 2))
    res = float(np.sum((alpha * z / (alpha + beta * s2)) ** 2)) + y_perp
    # log|A| = sum over the r non-zero directions of log(alpha + beta s^2) plus (d - r) log(alpha).
    logdet = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s2)) * np.log(alpha)
    evidence = (
        n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
        - beta / 2 * res - alpha / 2 * m2 - logdet / 2
    )
    return float(evidence) / n, alpha, beta


def logme(features, labels, *, tol: float = 1e-5, max_iter: int = 100) -> float:
    """LogME: the maximum, over the prior and noise precisions, of the per-example log evidence of a Bayesian linear
    model from the features to each one-hot label column, averaged over the classes (You et al. 2021, Alg. 1).

    Args:
        features: ``(n, d)`` target features from the candidate model (no fine-tuning).
        labels: ``(n,)`` integer target labels.
    """
    f = check_features(features, "features")
    y = _labels(labels, f.shape[0])
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    u, s2 = u[:, keep], s[keep] ** 2
    classes = np.unique(y)
    values = [_logme_one(u, s2, (y == c).astype(np.float64), n, d, tol, max_iter)[0] for c in classes]
    return float(np.mean(values))


# ---------------------------------------------------------------------------------------------------------------
# H-score
# ---------------------------------------------------------------------------------------------------------------


def hscore(features, labels, *, shrinkage: str | float | None = "ledoit_wolf", rcond: float = 1e-10) -> float:
    """H-score ``tr(cov(f)^-1 cov(E[f | y]))`` (Bao et al. 2019): the share of the feature variance the class
    explains, summed over feature directions; between 0 and ``min(d, classes - 1)``.

    With fewer rows than feature dimensions (a few hundred labelled rows, 384-1024-dim embeddings) ``cov(f)`` is
    singular and the original score saturates at ``classes - 1`` for every model. ``shrinkage`` fixes that as
    Ibrahim et al. 2022 ("Newer is not always better: rethinking transferability metrics", the shrinkage-based
    H-score) do: ``tr(((1 - a) cov(f) + a mu I)^-1 (1 - a) cov(E[f | y]))``, with ``a`` the Ledoit-Wolf
    coefficient (``"ledoit_wolf"``) or a given float in [0, 1]. ``shrinkage=None`` is the original score (covariances
    ``np.cov``, pseudo-inverse).
    """
    f = check_features(features, "features")
    y = _labels(labels, f.shape[0])
    f = f - f.mean(0)
    class_means = np.zeros_like(f)
    for c in np.unique(y):
        class_means[y == c] = f[y == c].mean(0)
    cov_g = np.atleast_2d(np.cov(class_means, rowvar=False))
    if shrinkage is None:
        cov_f = np.atleast_2d(np.cov(f, rowvar=False))
        return float(np.trace(np.linalg.pinv(cov_f, rcond=rcond, hermitian=True) @ cov_g))
    if shrinkage == "ledoit_wolf":
        from sklearn.covariance import ledoit_wolf_shrinkage

        a = float(ledoit_wolf_shrinkage(f, assume_centered=True))
    elif isinstance(shrinkage, (int, float)) and 0.0 <= shrinkage <= 1.0:
        a = float(shrinkage)
    else:
        raise ValueError(f"shrinkage: use 'ledoit_wolf', a number in [0, 1] or None, got {shrinkage!r}")
    cov_f = np.atleast_2d(np.cov(f, rowvar=False))
    mu = float(np.trace(cov_f)) / cov_f.shape[0]
    shrunk = (1.0 - a) * cov_f + a * mu * np.eye(cov_f.shape[0])
    return float(np.trace(np.linalg.solve(shrunk, (1.0 - a) * cov_g)))


# ---------------------------------------------------------------------------------------------------------------
# LEEP and NCE
# ---------------------------------------------------------------------------------------------------------------


def _joint(source_probs: np.ndarray, y: np.ndarray, num_target: int) -> np.ndarray:
    """Empirical joint ``P(y, z)`` of target label y and source label z, shape (num_target, Z)."""
    joint = np.zeros((num_target, source_probs.shape[1]))
    np.add.at(joint, y, source_probs)
    return joint / len(y)


def leep(source_probs, labels) -> float:
    """LEEP: the mean log-likelihood of the target labels under the "expected empirical predictor"
    ``p(y | x) = sum_z P(y | z) theta(x)_z`` (Nguyen et al. 2020, eq. 2), where ``theta(x)`` is the source
    classifier's distribution over its own labels z and ``P(y | z)`` is estimated from the same target rows.

    Args:
        source_probs: ``(n, Z)`` source-classifier probabilities on the target rows (rows sum to 1).
        labels: ``(n,)`` integer target labels.
    """
    theta = check_features(source_probs, "source_probs")
    if np.any(theta < 0) or not np.allclose(theta.sum(1), 1.0, atol=1e-4):
        raise ValueError("source_probs: rows must be probability distributions (apply a softmax to logits)")
    y = _labels(labels, theta.shape[0])
    joint = _joint(theta, y, int(y.max()) + 1)
    conditional = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    eep = theta @ conditional.T  # (n, num_target)
    return float(np.mean(np.log(np.maximum(eep[np.arange(len(y)), y], 1e-300))))


def nce(source_labels, labels) -> float:
    """Negative conditional entropy ``-H(Y | Z)`` (nats) of the target labels Y given the source labels Z that the
    source classifier assigns to the same rows (Tran et al. 2019). 0 is best (Z determines Y)."""
    z = _labels(source_labels, len(np.asarray(source_labels)))
    y = _labels(labels, len(z))
    onehot = np.zeros((len(z), int(z.max()) + 1))
    onehot[np.arange(len(z)), z] = 1.0
    joint = _joint(onehot, y, int(y.max()) + 1)
    marginal_z = joint.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / marginal_z), 0.0)
    return float(terms.sum())


# ---------------------------------------------------------------------------------------------------------------
# Source classifiers and ranking
# ---------------------------------------------------------------------------------------------------------------


def source_classifier_outputs(source_features, source_labels, target_features, *, C: float = 1.0,
                              seed: int = 0) -> np.ndarray:
    """Fit a logistic regression on labelled source features and return its probabilities on the target rows,
    ``(n_t, Z)``: the "source model" that LEEP and NCE score when no fine-tuned source classifier exists."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = check_features(source_features, "source_features")
    xt = check_features(target_features, "target_features")
    ys = _labels(source_labels, xs.shape[0])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)).fit(xs, ys)
    return clf.predict_proba(xt)


def transferability_scores(
    target_features,
    target_labels,
    *,
    source_probs=None,
    scores: Sequence[str] = SCORES,
) -> dict[str, float]:
    """The scores that the inputs allow: LogME and H-score from the target features, LEEP and NCE from
    ``source_probs`` (``(n_t, Z)`` source-classifier probabilities on the same target rows) when given."""
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise ValueError(f"scores: unknown {unknown}; choose from {list(SCORES)}")
    out: dict[str, float] = {}
    if "logme" in scores:
        out["logme"] = logme(target_features, target_labels)
    if "hscore" in scores:
        out["hscore"] = hscore(target_features, target_labels)
    if source_probs is not None:
        probs = np.asarray(source_probs, dtype=np.float64)
        if "leep" in scores:
            out["leep"] = leep(probs, target_labels)
        if "nce" in scores:
            out["nce"] = nce(probs.argmax(1), target_labels)
    return out


def rank_candidates(results: Mapping[str, Mapping[str, float]], score: str) -> list[tuple[str, float]]:
    """Candidates (models or sources) sorted best-first by ``score``: ``[(name, value), ...]``; candidates without
    that score (or with NaN) are left out. Ties keep the input order."""
    have = [(name, float(r[score])) for name, r in results.items() if score in r and np.isfinite(r[score])]
    return sorted(have, key=lambda item: -item[1])
