"""KMM: constraints, agreement with a reference QP solve (SLSQP) and with skada, the approximate solvers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import LinearConstraint, minimize

from hf_transfer.instance import KMM
from hf_transfer.instance._kernels import rbf_kernel
from hf_transfer.instance.kmm import project_box_sum


def _qp(Xs, Xt, gamma):
    n = Xs.shape[0]
    K = rbf_kernel(Xs, Xs, gamma)
    kappa = n * rbf_kernel(Xs, Xt, gamma).mean(1)
    return K, kappa


def _slsqp(K, kappa, B, eps):
    n = K.shape[0]
    res = minimize(
        lambda w: 0.5 * w @ K @ w - kappa @ w,
        np.ones(n),
        jac=lambda w: K @ w - kappa,
        method="SLSQP",
        bounds=[(0.0, B)] * n,
        constraints=[LinearConstraint(np.ones((1, n)), n * (1 - eps), n * (1 + eps))],
        options={"maxiter": 1000, "ftol": 1e-13},
    )
    assert res.success, res.message
    return res.x, res.fun


@pytest.mark.parametrize(("gamma", "B", "eps"), [(2.0, 1000.0, None), (2.0, 3.0, 0.1), (0.5, 2.5, 0.05)])
def test_matches_reference_qp(gamma, B, eps):
    rng = np.random.default_rng(0)
    Xs, Xt = rng.normal(0, 1, (40, 2)), rng.normal(0.5, 1, (30, 2))
    kmm = KMM(gamma=gamma, B=B, eps=eps, tol=1e-10, max_iter=50_000).fit(Xs, Xt)
    w = kmm.weights_
    assert kmm.solver_ == "exact" and kmm.converged_
    # constraints
    assert w.min() >= 0 and w.max() <= B + 1e-12
    assert abs(w.mean() - 1) <= kmm.eps_ + 1e-12
    K, kappa = _qp(Xs, Xt, gamma)
    w_ref, f_ref = _slsqp(K, kappa, B, kmm.eps_)
    # same optimum value, and (the QP being strictly convex for distinct rows) the same minimiser
    assert kmm.objective_ <= f_ref + 1e-6 * abs(f_ref)
    assert kmm.objective_ == pytest.approx(0.5 * w @ K @ w - kappa @ w)
    np.testing.assert_allclose(w, w_ref, atol=2e-3)
    if B < 1000:
        assert np.isclose(w, B).any()  # the box is active in these cases, so it is really being enforced


def test_eps_constraint_is_active_and_respected():
    # A target far from most of the source: the unconstrained optimum wants a small total mass.
    rng = np.random.default_rng(3)
    Xs, Xt = rng.normal(0, 1, (60, 1)), rng.normal(2.5, 0.3, (40, 1))
    kmm = KMM(gamma=1.0, B=1000.0, eps=0.05, tol=1e-9, max_iter=20_000).fit(Xs, Xt)
    assert abs(kmm.weights_.mean() - 1) == pytest.approx(0.05, abs=1e-9)
    loose = KMM(gamma=1.0, B=1000.0, eps=0.9, tol=1e-9, max_iter=20_000).fit(Xs, Xt)
    assert abs(loose.weights_.mean() - 1) > 0.05 + 1e-3  # so eps=0.05 above was binding


def test_project_box_sum_matches_kkt_and_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(1.0, 2.0, 30)
        upper, lo, hi = 2.5, 25.0, 28.0
        p = project_box_sum(v, upper, lo, hi)
        assert p.min() >= 0 and p.max() <= upper + 1e-12 and lo - 1e-9 <= p.sum() <= hi + 1e-9
        ref = minimize(
            lambda w, v=v: 0.5 * np.sum((w - v) ** 2),
            np.clip(v, 0, upper),
            jac=lambda w, v=v: w - v,
            method="SLSQP",
            bounds=[(0, upper)] * 30,
            constraints=[LinearConstraint(np.ones((1, 30)), lo, hi)],
            options={"ftol": 1e-14, "maxiter": 500},
        ).x
        np.testing.assert_allclose(p, ref, atol=1e-6)


def test_agrees_with_skada_scipy_solver():
    skada = pytest.importorskip("skada")
    rng = np.random.default_rng(1)
    Xs, Xt = rng.normal(0, 1, (50, 2)), rng.normal([0.7, -0.3], 0.8, (40, 2))
    gamma = 0.5
    ours = KMM(gamma=gamma, tol=1e-9, max_iter=20_000).fit_weights(Xs, Xt)
    X = np.vstack([Xs, Xt])
    sample_domain = np.r_[np.ones(len(Xs)), -np.ones(len(Xt))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = skada.KMMReweightAdapter(gamma=gamma, solver="scipy", tol=1e-10, max_iter=2000)
        theirs = theirs.fit(X, sample_domain=sample_domain).source_weights_
    assert np.corrcoef(ours, theirs)[0, 1] > 0.999
    # The QP is ill-conditioned along smooth directions, so compare what both minimise: ours is at least as good.
    K, kappa = _qp(Xs, Xt, gamma)
    f_ours, f_theirs = 0.5 * ours @ K @ ours - kappa @ ours, 0.5 * theirs @ K @ theirs - kappa @ theirs
    assert f_ours <= f_theirs + 1e-8 * abs(f_theirs)


def _binned(x, values, n_bins=10):
    edges = np.quantile(x, np.linspace(0, 1, n_bins + 1))
    bins = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    return np.array([values[bins == b].mean() for b in range(n_bins)])


def test_matches_target_moments_and_gaussian_density_ratio(make_gaussian_shift):
    # KMM matches kernel means, so what it guarantees is a weighted source sample whose moments are the target
    # sample's; its weights are noisy row by row (the exact minimiser is spiky), so the ratio is compared per bin.
    Xs, Xt, ratio = make_gaussian_shift(600, 600, seed=2)
    w = KMM(random_state=0).fit_weights(Xs, Xt)
    x = Xs[:, 0]
    w_mean = np.average(x, weights=w)
    assert abs(x.mean() - Xt.mean()) > 0.4  # the raw source mean is off by the shift...
    assert abs(w_mean - Xt.mean()) < 0.015  # ...the weighted one is not
    assert abs(np.average((x - w_mean) ** 2, weights=w) - Xt.var()) < 0.03
    binned_w, binned_r = _binned(x, w / w.mean()), _binned(x, ratio)
    assert np.corrcoef(binned_w, binned_r)[0, 1] > 0.9
    assert np.abs(binned_w / binned_r - 1).max() < 0.4


@pytest.mark.parametrize("solver", ["nystroem", "rff"])
def test_approximate_solvers_keep_constraints_and_reduce_mmd(solver, make_gaussian_shift):
    Xs, Xt, ratio = make_gaussian_shift(1500, 1000, seed=4)
    kmm = KMM(solver=solver, n_components=300, B=5.0, eps=0.05, random_state=0).fit(Xs, Xt)
    w = kmm.weights_
    assert kmm.solver_ == solver
    assert w.min() >= 0 and w.max() <= 5.0 + 1e-12 and abs(w.mean() - 1) <= 0.05 + 1e-12
    # judged with the exact kernel: the re-weighted source is much closer to the target than the raw source
    K, kappa = _qp(Xs, Xt, kmm.gamma_)

    def objective(v):
        return 0.5 * v @ K @ v - kappa @ v

    exact = KMM(gamma=kmm.gamma_, B=5.0, eps=0.05).fit(Xs, Xt)
    gap_uniform = objective(np.ones(len(w))) - exact.objective_
    assert gap_uniform > 0
    assert objective(w) - exact.objective_ < 0.2 * gap_uniform
    assert np.corrcoef(w, ratio)[0, 1] > 0.8


def test_auto_switches_to_nystroem_above_max_exact():
    rng = np.random.default_rng(0)
    kmm = KMM(max_exact=100, n_components=50, random_state=0).fit(rng.normal(size=(150, 3)), rng.normal(size=(80, 3)))
    assert kmm.solver_ == "nystroem"
    assert KMM(max_exact=200).fit(rng.normal(size=(150, 3)), rng.normal(size=(80, 3))).solver_ == "exact"


def test_bad_parameters():
    X = np.zeros((5, 2))
    with pytest.raises(ValueError, match="solver: unknown value 'cvx'"):
        KMM(solver="cvx").fit(X, X)
    with pytest.raises(ValueError, match="B: must be at least"):
        KMM(B=0.5, eps=0.1).fit(X, X)
    with pytest.raises(ValueError, match="gamma: must be positive"):
        KMM(gamma=-1.0).fit(X, X)
