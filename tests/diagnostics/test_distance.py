"""Domain distances against hand computations and peer implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_transfer.diagnostics.distance import coral_distance, mmd2_from_kernel, mmd_test, proxy_a_distance
from hf_transfer.methods.mmd import mmd2


def test_mmd_by_hand_on_four_points():
    # source {0, 1}, target {3, 5} on a line, gamma 0.5: every kernel value written out.
    xs, xt = np.array([[0.0], [1.0]]), np.array([[3.0], [5.0]])
    k = lambda a, b: np.exp(-0.5 * (a - b) ** 2)  # noqa: E731
    xx = 2 * k(0, 1) / 2
    yy = 2 * k(3, 5) / 2
    xy = (k(0, 3) + k(0, 5) + k(1, 3) + k(1, 5)) / 4
    result = mmd_test(xs, xt, gamma=0.5, num_permutations=0)
    assert result.mmd2 == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert np.isnan(result.p_value)


def test_mmd_matches_the_training_loss_estimator():
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(40, 5)), rng.normal(0.5, 1.0, size=(30, 5))
    result = mmd_test(xs, xt, gamma="median", num_permutations=0)
    # methods.mmd.mmd2 with one kernel of bandwidth b is exp(-d^2 / b): the same kernel when b = 1 / gamma.
    ref = mmd2(torch.from_numpy(xs), torch.from_numpy(xt), kernel_multipliers=[1.0], bandwidth=1.0 / result.gamma)
    assert result.mmd2 == pytest.approx(float(ref), rel=1e-9)
    # the median heuristic: 1 / median squared distance between distinct pooled rows
    pooled = np.vstack([xs, xt])
    d2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)[np.triu_indices(len(pooled), 1)]
    assert result.gamma == pytest.approx(1.0 / np.median(d2), rel=1e-9)


def test_mmd_permutation_test_detects_shift_and_not_noise():
    rng = np.random.default_rng(1)
    same = mmd_test(rng.normal(size=(60, 4)), rng.normal(size=(60, 4)), num_permutations=200, seed=0)
    shifted = mmd_test(rng.normal(size=(60, 4)), rng.normal(1.0, 1.0, size=(60, 4)), num_permutations=200, seed=0)
    assert same.p_value > 0.05
    assert shifted.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed statistic
    assert shifted.mmd2 > 10 * abs(same.mmd2)


def test_mmd_from_kernel_is_invariant_to_order_within_a_domain():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3))
    kernel = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1))
    perm = np.r_[rng.permutation(6), 6 + rng.permutation(4)]
    assert mmd2_from_kernel(kernel[np.ix_(perm, perm)], 6) == pytest.approx(mmd2_from_kernel(kernel, 6))


def test_proxy_a_distance_matches_sklearn_held_out_error():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    xs, xt = rng.normal(size=(100, 3)), rng.normal(0.7, 1.0, size=(100, 3))
    result = proxy_a_distance(xs, xt, seed=0)
    # Reference: the same 2-fold cross-fitted classifier; error -> 2 (1 - 2 err).
    x, d = np.vstack([xs, xt]), np.r_[np.zeros(100), np.ones(100)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    errors = []
    for seed in range(20):
        folds = StratifiedKFold(2, shuffle=True, random_state=seed)
        errors.append(np.mean(cross_val_predict(clf, x, d, cv=folds) != d))
    assert abs(result.error - np.mean(errors)) < 0.05  # fold assignment differs; the error is a fold average
    assert result.pad == pytest.approx(2 * (1 - 2 * result.error))
    assert 0.5 < result.pad < 1.8  # a 0.7-sigma shift in 3 dims: separable, not perfectly


def test_proxy_a_distance_extremes():
    rng = np.random.default_rng(4)
    far = proxy_a_distance(rng.normal(size=(80, 2)), rng.normal(20.0, 1.0, size=(80, 2)))
    assert far.pad == pytest.approx(2.0) and far.auc == pytest.approx(1.0)
    same = proxy_a_distance(rng.normal(size=(200, 2)), rng.normal(size=(200, 2)))
    assert same.pad < 0.4


def test_coral_distance_by_hand():
    xs = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # cov = diag(4/3, 4/3)
    xt = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])  # cov = [[1, 1], [1, 1]]
    diff = np.array([[4 / 3 - 1, -1.0], [-1.0, 4 / 3 - 1]])
    assert coral_distance(xs, xt) == pytest.approx((diff**2).sum() / (4 * 2 * 2))
    assert coral_distance(xs, xs + 5.0) == pytest.approx(0.0, abs=1e-12)  # blind to a mean shift, by design
