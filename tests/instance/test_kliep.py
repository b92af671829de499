"""KLIEP: the closed-form Gaussian ratio, the optimiser against a reference solve, skada on the same width."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import LinearConstraint, minimize

from hf_transfer.instance import KLIEP
from hf_transfer.instance._kernels import rbf_kernel
from hf_transfer.instance.kliep import _kliep_ascent


def test_recovers_gaussian_density_ratio(make_gaussian_shift):
    Xs, Xt, ratio = make_gaussian_shift(800, 800, seed=0)
    kliep = KLIEP(random_state=0).fit(Xs, Xt)
    w = kliep.weights_
    assert w.mean() == pytest.approx(1.0, abs=1e-6)  # the constraint mean_s w = 1
    assert np.corrcoef(w, ratio)[0, 1] > 0.93
    assert np.sqrt(np.mean((w - ratio) ** 2)) < 0.2
    # the cross-validation really ran over the five median-grid widths and picked the best-scoring one
    assert len(kliep.cv_scores_) == 5 and kliep.gamma_ == max(kliep.cv_scores_, key=kliep.cv_scores_.get)
    # the fitted function extends to new rows and agrees with the closed form there too
    grid = np.linspace(-1.5, 1.5, 31)[:, None]
    np.testing.assert_allclose(kliep.predict_weights(grid), np.exp(0.5 * grid[:, 0] - 0.125), rtol=0.2)


def test_optimiser_reaches_the_constrained_maximum():
    rng = np.random.default_rng(0)
    Xs, Xt = rng.normal(0, 1, (200, 2)), rng.normal(0.6, 1, (150, 2))
    centers = Xt[:15]
    A, b = rbf_kernel(Xt, centers, 0.5), rbf_kernel(Xs, centers, 0.5).mean(0)
    alpha, obj, _ = _kliep_ascent(A, b, max_iter=20_000, tol=1e-10)
    assert alpha.min() >= 0 and b @ alpha == pytest.approx(1.0)
    assert obj == pytest.approx(np.mean(np.log(A @ alpha)))
    ref = minimize(
        lambda a: -np.mean(np.log(A @ a)),
        np.full(15, 1.0 / b.sum()),
        jac=lambda a: -A.T @ (1.0 / (A @ a)) / A.shape[0],
        method="SLSQP",
        bounds=[(1e-12, None)] * 15,
        constraints=[LinearConstraint(b[None, :], 1.0, 1.0)],
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    assert obj >= -ref.fun - 1e-7  # at least as good as the reference solver
    assert obj == pytest.approx(-ref.fun, abs=1e-5)


def test_beats_skada_objective_and_agrees_on_the_same_width(make_gaussian_shift):
    skada = pytest.importorskip("skada")
    Xs, Xt, ratio = make_gaussian_shift(800, 800, seed=1)
    gamma = 0.3
    X = np.vstack([Xs, Xt])
    sample_domain = np.r_[np.ones(len(Xs)), -np.ones(len(Xt))]
    theirs = skada.KLIEPReweightAdapter(gamma=gamma, random_state=0).fit(X, sample_domain=sample_domain)
    w_theirs = theirs.compute_weights(X, sample_domain=sample_domain)[: len(Xs)]
    ours = KLIEP(gamma=gamma, random_state=0).fit(Xs, Xt)
    assert ours.gamma_ == gamma and ours.cv_scores_ == {}
    # Agreement is real but not tight: skada's ascent step is machine epsilon, so its alpha barely leaves the
    # start and its weights are close to a kernel density of the target centres (measured corr ~0.8 here).
    assert np.corrcoef(ours.weights_, w_theirs)[0, 1] > 0.75
    # Same centres, same width: maximising the same KLIEP objective, ours must reach at least skada's value.
    A = rbf_kernel(Xt, theirs.centers_, gamma)
    b = rbf_kernel(Xs, theirs.centers_, gamma).mean(0)
    alpha, obj, _ = _kliep_ascent(A, b, max_iter=2000, tol=1e-9)
    assert obj >= np.mean(np.log(A @ theirs.alpha_)) - 1e-9
    # and the closed-form ratio is recovered at least as well
    err_ours = np.sqrt(np.mean((ours.weights_ - ratio) ** 2))
    err_theirs = np.sqrt(np.mean((w_theirs - ratio) ** 2))
    assert err_ours <= err_theirs + 0.02


def test_parameters_are_checked():
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="n_centers"):
        KLIEP(n_centers=0).fit(X, X)
    with pytest.raises(ValueError, match="cv: need"):
        KLIEP(gamma=[0.1, 1.0], cv=50).fit(X, X)
    with pytest.raises(ValueError, match="gamma: unknown value 'wide'"):
        KLIEP(gamma="wide").fit(X, X)
    with pytest.raises(RuntimeError, match="not fitted"):
        KLIEP().predict_weights(X)
