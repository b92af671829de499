"""Transferability scores against independent references: brute-force evidence maximisation for LogME, the
correlation ratio for H-score, hand-computed tables for LEEP, scikit-learn's mutual information for NCE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import entropy, multivariate_normal

from hf_transfer.diagnostics.transferability import (
    hscore,
    leep,
    logme,
    logme_evidence,
    nce,
    rank_candidates,
    source_classifier_outputs,
    transferability_scores,
)


def _brute_force_logme(f: np.ndarray, y: np.ndarray) -> float:
    """Max over (alpha, beta) of log N(y; 0, I/beta + F F^T/alpha), averaged over one-hot columns, per example."""
    n = len(y)
    values = []
    for c in np.unique(y):
        t = (y == c).astype(float)

        def neg(log_ab, t=t):
            alpha, beta = np.exp(log_ab)
            cov = np.eye(n) / beta + f @ f.T / alpha
            return -multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(t)

        best = min((minimize(neg, x0, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10,
                                                                        "maxiter": 4000})
                    for x0 in ([0.0, 0.0], [2.0, 1.0], [-2.0, 2.0])), key=lambda r: r.fun)
        values.append(-best.fun / n)
    return float(np.mean(values))


def test_logme_equals_brute_force_evidence_maximum():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(25, 3))
    y = (f[:, 0] + 0.5 * rng.normal(size=25) > 0).astype(int)
    assert logme(f, y) == pytest.approx(_brute_force_logme(f, y), abs=1e-5)


def test_logme_closed_form_evidence_is_the_gaussian_marginal():
    rng = np.random.default_rng(1)
    f, t = rng.normal(size=(12, 4)), rng.normal(size=12)
    cov = np.eye(12) / 2.5 + f @ f.T / 0.7
    ref = multivariate_normal(mean=np.zeros(12), cov=cov).logpdf(t)
    assert logme_evidence(f, t, alpha=0.7, beta=2.5) == pytest.approx(ref, rel=1e-10)


def test_logme_prefers_informative_features_and_handles_rank_deficiency():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=120)
    good = np.eye(3)[y] * 3 + rng.normal(size=(120, 3))
    noise = rng.normal(size=(120, 3))
    assert logme(good, y) > logme(noise, y)
    collinear = np.hstack([good, good[:, :1] * 2.0])  # rank 3 in 4 columns
    brute = _brute_force_logme(collinear[:40], y[:40])
    assert logme(collinear[:40], y[:40]) == pytest.approx(brute, abs=1e-4)


def test_hscore_formula_and_correlation_ratio():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=200)
    f1 = (y * 2.0 + rng.normal(size=200))[:, None]
    # 1-D: H = Var(E[f|y]) / Var(f), the correlation ratio (between-class over total variance)
    means = np.array([f1[y == c].mean() for c in (0, 1)])[y]
    assert hscore(f1, y, shrinkage=None) == pytest.approx(np.var(means) / np.var(f1), rel=1e-9)
    # d-D: the numpy formula of the paper
    f = rng.normal(size=(200, 4)) + y[:, None] * np.array([1.0, 0.0, 2.0, 0.0])
    g = np.stack([f[y == c].mean(0) for c in (0, 1)])[y]
    ref = np.trace(np.linalg.inv(np.cov(f, rowvar=False)) @ np.cov(g, rowvar=False))
    assert hscore(f, y, shrinkage=None) == pytest.approx(ref, rel=1e-9)
    assert 0.0 <= hscore(f, y, shrinkage=None) <= 1.0  # at most classes - 1


def test_shrinkage_hscore_matches_sklearn_ledoit_wolf_and_does_not_saturate():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, size=30)
    wide = rng.normal(size=(30, 60)) + 0.3 * y[:, None]  # more dimensions than rows
    assert hscore(wide, y, shrinkage=None) == pytest.approx(1.0, abs=1e-6)  # the original score saturates
    lw = LedoitWolf(assume_centered=True).fit(wide - wide.mean(0))
    # sklearn shrinks the biased covariance; ours the unbiased one: the same estimator up to n/(n-1) on cov(g) too
    g = np.stack([wide[y == c].mean(0) for c in (0, 1)])[y] - wide.mean(0)
    ref = np.trace(np.linalg.solve(lw.covariance_, (1 - lw.shrinkage_) * np.cov(g, rowvar=False, bias=True)))
    assert hscore(wide, y) == pytest.approx(ref, rel=1e-9)
    assert hscore(wide, y) < 0.9
    with pytest.raises(ValueError, match="shrinkage"):
        hscore(wide, y, shrinkage="oas")


def test_leep_by_hand():
    theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    # joint P(y, z) = 1/3 * sum of theta rows per label: y=0 -> [1.5, 0.5], y=1 -> [0.2, 0.8]
    joint = np.array([[1.5, 0.5], [0.2, 0.8]]) / 3
    cond = joint / joint.sum(0)  # P(y | z)
    expected = np.mean([np.log(theta[i] @ cond[y[i]]) for i in range(3)])
    assert leep(theta, y) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="probability"):
        leep(np.array([[2.0, -1.0]]), np.array([0]))


def test_nce_is_minus_conditional_entropy():
    rng = np.random.default_rng(4)
    z = rng.integers(0, 4, size=300)
    y = (z + (rng.random(300) < 0.2)) % 3
    from sklearn.metrics import mutual_info_score

    h_y = entropy(np.bincount(y) / len(y))
    assert nce(z, y) == pytest.approx(-(h_y - mutual_info_score(y, z)), rel=1e-9)
    assert nce(y, y) == pytest.approx(0.0, abs=1e-12)


def test_scores_rank_a_related_source_above_an_unrelated_one():
    rng = np.random.default_rng(5)
    xt = rng.normal(size=(150, 5))
    yt = (xt[:, 0] > 0).astype(int)
    xs = rng.normal(size=(150, 5))
    related = source_classifier_outputs(xs, (xs[:, 0] > 0).astype(int), xt)
    unrelated = source_classifier_outputs(xs, (xs[:, 3] > 0).astype(int), xt)
    results = {"unrelated": transferability_scores(xt, yt, source_probs=unrelated),
               "related": transferability_scores(xt, yt, source_probs=related)}
    assert rank_candidates(results, "leep")[0][0] == "related"
    assert rank_candidates(results, "nce")[0][0] == "related"
    assert set(results["related"]) == {"logme", "hscore", "leep", "nce"}
    with pytest.raises(ValueError, match="unknown"):
        transferability_scores(xt, yt, scores=["logmee"])
