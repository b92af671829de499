"""Density ratio by domain classifier: closed-form Gaussian ratio, the class-prior correction, capping, skada."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from hf_transfer.instance import DensityRatioClassifier


def test_recovers_gaussian_density_ratio(make_gaussian_shift):
    # log p_t/p_s is linear in x here, so logistic regression is a well-specified model of the ratio.
    Xs, Xt, ratio = make_gaussian_shift(1500, 1500, seed=0)
    est = DensityRatioClassifier(random_state=0).fit(Xs, Xt)
    assert np.corrcoef(est.weights_, ratio)[0, 1] > 0.99
    assert np.sqrt(np.mean((est.weights_ - ratio / ratio.mean()) ** 2)) < 0.1
    np.testing.assert_allclose(est.ratio_, ratio, rtol=0.25)
    assert est.weights_.mean() == pytest.approx(1.0)
    assert 0.55 < est.domain_auc_ < 0.7  # two unit Gaussians 0.5 apart: AUC = Phi(0.5 / sqrt(2)) = 0.638


def test_class_prior_correction_with_unequal_sizes(make_gaussian_shift):
    # 4x more source rows than target rows: without the n_s / n_t factor every raw ratio would be 4x too small.
    Xs, Xt, ratio = make_gaussian_shift(2000, 500, seed=1)
    est = DensityRatioClassifier(max_weight=None, random_state=0).fit(Xs, Xt)
    assert np.median(est.ratio_ / ratio) == pytest.approx(1.0, abs=0.15)
    assert np.mean(est.ratio_) == pytest.approx(1.0, abs=0.15)  # E_s[p_t / p_s] = 1


def test_cap_and_mean_one():
    rng = np.random.default_rng(0)
    Xs, Xt = rng.normal(0, 1, (500, 2)), rng.normal(2.0, 1, (500, 2))  # strong shift: heavy-tailed ratios
    free = DensityRatioClassifier(max_weight=None, random_state=0).fit(Xs, Xt)
    assert free.weights_.max() > 10
    capped = DensityRatioClassifier(max_weight=10.0, random_state=0).fit(Xs, Xt)
    assert capped.weights_.max() == pytest.approx(10.0)
    assert capped.weights_.mean() == pytest.approx(1.0, abs=1e-12)
    flat = DensityRatioClassifier(power=0.0, random_state=0).fit(Xs, Xt)
    np.testing.assert_allclose(flat.weights_, 1.0)


def test_cross_fitting_is_honest_where_in_sample_overfits():
    # 200 rows, 300 noise features, identical domains: an in-sample classifier separates them by memorising,
    # out-of-fold probabilities cannot, so the cross-fitted domain AUC correctly says "no shift".
    rng = np.random.default_rng(0)
    Xs, Xt = rng.normal(size=(100, 300)), rng.normal(size=(100, 300))
    clf = LogisticRegression(C=100.0, max_iter=2000)
    in_sample = DensityRatioClassifier(classifier=clf, random_state=0).fit(Xs, Xt)
    crossfit = DensityRatioClassifier(classifier=clf, cv=5, random_state=0).fit(Xs, Xt)
    assert in_sample.domain_auc_ > 0.99
    assert abs(crossfit.domain_auc_ - 0.5) < 0.15
    assert len(crossfit.classifier_) == 5


def test_agrees_with_skada_discriminator_up_to_its_inverted_ratio(make_gaussian_shift):
    skada = pytest.importorskip("skada")
    Xs, Xt, ratio = make_gaussian_shift(800, 600, seed=3)
    X = np.vstack([Xs, Xt])
    sample_domain = np.r_[np.ones(len(Xs)), -np.ones(len(Xt))]
    theirs = skada.DiscriminatorReweightAdapter(domain_classifier=LogisticRegression())
    w_theirs = theirs.fit(X, sample_domain=sample_domain).compute_weights(X, sample_domain=sample_domain)[: len(Xs)]
    ours = DensityRatioClassifier(classifier=LogisticRegression(), max_weight=None, random_state=0).fit(Xs, Xt)
    # skada 0.6.0 labels target rows 1 and then returns (1 - P(1|x)) / P(1|x) = p_s / p_t: the inverse ratio.
    # Same classifier and data, so our ratio times theirs is one constant (their normalisation), to round-off.
    product = ours.ratio_ * w_theirs
    np.testing.assert_allclose(product, product.mean(), rtol=1e-6)
    # and the closed form shows which way round is right
    assert np.corrcoef(ours.weights_, ratio)[0, 1] > 0.99
    assert np.corrcoef(w_theirs, ratio)[0, 1] < -0.5
    assert np.corrcoef(1.0 / w_theirs, ratio)[0, 1] > 0.99


def test_bad_arguments():
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="classifier: LinearSVC has no predict_proba"):
        DensityRatioClassifier(classifier=LinearSVC()).fit(X, X)
    with pytest.raises(ValueError, match="max_weight: must be >= 1"):
        DensityRatioClassifier(max_weight=0.5).fit(X, X)
    with pytest.raises(ValueError, match="cv: need 2 <= cv"):
        DensityRatioClassifier(cv=100).fit(X, X)
    with pytest.raises(ValueError, match="clip_proba"):
        DensityRatioClassifier(clip_proba=0.7).fit(X, X)
