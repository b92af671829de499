"""TrAdaBoost: beats source-only training when part of the source follows another concept; the paper's rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from hf_transfer.instance import TrAdaBoost


def mixed_concept(seed: int, n_labelled: int = 20):
    """Target concept x0 + x1 > 0. Half the source follows it, the other half follows x0 - x1 > 0."""
    rng = np.random.default_rng(seed)
    Xs = rng.normal(size=(1000, 2))
    agree = np.arange(1000) < 500
    ys = np.where(agree, Xs[:, 0] + Xs[:, 1] > 0, Xs[:, 0] - Xs[:, 1] > 0).astype(int)
    Xt = rng.normal(size=(2000 + n_labelled, 2))
    yt = (Xt[:, 0] + Xt[:, 1] > 0).astype(int)
    return Xs, ys, agree, Xt[:n_labelled], yt[:n_labelled], Xt[n_labelled:], yt[n_labelled:]


def test_beats_source_only_and_downweights_the_conflicting_source():
    gains = []
    for seed in range(3):
        Xs, ys, agree, Xl, yl, Xtest, ytest = mixed_concept(seed)
        source_only = LogisticRegression().fit(Xs, ys).score(Xtest, ytest)
        pooled = LogisticRegression().fit(np.vstack([Xs, Xl]), np.r_[ys, yl]).score(Xtest, ytest)
        boost = TrAdaBoost(n_estimators=20).fit(Xs, ys, Xl, yl)
        acc = boost.score(Xtest, ytest)
        assert acc > max(source_only, pooled) + 0.03
        gains.append(acc - source_only)
        # the source rows that contradict the target concept end with less weight than those that follow it
        assert boost.weights_[~agree].mean() < 0.9 * boost.weights_[agree].mean()
        assert boost.sample_weight_.mean() == pytest.approx(1.0)
    assert np.mean(gains) > 0.08


def test_binary_hard_vote_is_the_paper_rule():
    Xs, ys, _, Xl, yl, Xtest, _ = mixed_concept(0)
    boost = TrAdaBoost(DecisionTreeClassifier(max_depth=2, random_state=0), n_estimators=9).fit(Xs, ys, Xl, yl)
    # Dai et al.: h_f(x) = 1 iff prod_{t >= ceil(N/2)} beta_t^{-h_t(x)} >= prod_{t >= ceil(N/2)} beta_t^{-1/2}
    start = int(np.ceil(9 / 2)) - 1
    lhs = sum(-np.log(b) * est.predict(Xtest) for b, est in zip(boost.betas_[start:], boost.estimators_[start:]))
    rhs = sum(-0.5 * np.log(b) for b in boost.betas_[start:])
    expected = (lhs >= rhs).astype(int)
    np.testing.assert_array_equal(boost.predict(Xtest), expected)
    proba = boost.predict_proba(Xtest)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (boost.errors_ > 0).all() and (boost.errors_ < 0.5).all()


def test_multiclass_and_soft_voting():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [4, 0], [0, 4]])
    ys = rng.integers(0, 3, 600)
    Xs = centers[ys] + rng.normal(size=(600, 2))
    yt = rng.integers(0, 3, 300)
    Xt = centers[yt] + rng.normal(size=(300, 2)) + [1.0, 0.5]
    boost = TrAdaBoost(n_estimators=6, voting="soft").fit(Xs, ys, Xt[:30], yt[:30])
    assert boost.classes_.tolist() == [0, 1, 2]
    assert boost.predict_proba(Xt).shape == (300, 3)
    assert boost.score(Xt[30:], yt[30:]) > 0.8


def test_bad_arguments():
    Xs, ys, _, Xl, yl, _, _ = mixed_concept(0)
    with pytest.raises(ValueError, match="yt: has 3 labels but the features have 20 rows"):
        TrAdaBoost().fit(Xs, ys, Xl, yl[:3])
    with pytest.raises(ValueError, match="sample_weight"):
        TrAdaBoost(LinearSVC(), voting="hard").fit(Xs, ys, Xl, yl, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="voting='soft' needs an estimator with predict_proba"):
        TrAdaBoost(LinearSVC(), voting="soft").fit(Xs, ys, Xl, yl)
    with pytest.raises(RuntimeError, match="not fitted"):
        TrAdaBoost().predict(Xl)
