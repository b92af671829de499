"""Label-free validators: hand values, skada's scorers, known density ratios and constructed model-selection cases."""

import math

import numpy as np
import pytest
import torch

from hf_transfer.validators import (
    cross_entropy_per_example,
    dev_score,
    domain_density_ratio,
    entropy_score,
    iwv_score,
    select_checkpoint,
    snd_score,
)


class _FixedPredictor:
    """An sklearn-style estimator whose predict_proba looks rows up by index (for skada's scorers)."""

    def __init__(self, proba):
        self.proba = proba

    def predict_proba(self, X, sample_domain=None, **kwargs):
        return self.proba[X[:, 0].astype(int)]


def _skada_score(scorer, proba):
    n = len(proba)
    X = np.concatenate([np.arange(n), np.arange(n)])[:, None].astype(float)
    domain = np.array([1] * n + [-2] * n)  # skada: positive = source, negative = target
    y = np.array([0] * n + [-1] * n)
    return scorer(_FixedPredictor(proba), X, y, sample_domain=domain)


def _confident(labels, num_classes, *, confidence=0.97, seed=0):
    """Rows that give ``confidence`` to their label and share the rest, with a little jitter."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    p = np.full((n, num_classes), (1 - confidence) / (num_classes - 1))
    p[np.arange(n), labels] = confidence
    p += rng.uniform(0, 0.04 / num_classes, size=p.shape)
    return p / p.sum(1, keepdims=True)


def _clustered(n=60, num_classes=50, seed=0):
    """Confident and well clustered: the rows fall into 4 classes, n/4 rows each."""
    return _confident(np.arange(n) % 4, num_classes, seed=seed)


def _scattered_confident(n=60, num_classes=50, seed=0):
    """Just as confident, but each row on a random class of 50: few rows share a neighbourhood."""
    labels = np.random.default_rng(seed + 100).integers(0, num_classes, n)
    return _confident(labels, num_classes, seed=seed)


def _diffuse(n=60, num_classes=50, seed=0):
    """Unconfident predictions spread over the simplex."""
    return np.random.default_rng(seed).dirichlet(np.ones(num_classes), size=n)


def test_entropy_score_by_hand_and_sign():
    p = np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    assert entropy_score(p) == pytest.approx(-(1.5 * math.log(2)) / 2)
    assert entropy_score(torch.tensor(p)) == pytest.approx(entropy_score(p), rel=1e-6)
    logits = np.log(p[:1])
    assert entropy_score(logits, logits=True) == pytest.approx(-1.5 * math.log(2))
    assert entropy_score(_clustered()) > entropy_score(_diffuse())


def test_entropy_score_matches_skada_up_to_its_per_class_mean():
    metrics = pytest.importorskip("skada.metrics")
    p = _diffuse(n=25, num_classes=5)
    # skada's reduction="mean" averages -p log p over all n * C entries, i.e. divides the mean entropy by C.
    skada = _skada_score(metrics.PredictionEntropyScorer(), p)
    assert skada * 5 == pytest.approx(entropy_score(p), rel=1e-5)  # skada adds 1e-7 inside the log


@pytest.mark.parametrize("make", [_clustered, _scattered_confident, _diffuse])
def test_snd_matches_skada(make):
    metrics = pytest.importorskip("skada.metrics")
    p = make()
    assert snd_score(p) == pytest.approx(_skada_score(metrics.SoftNeighborhoodDensity(), p), rel=1e-9)


def test_snd_by_hand_for_three_points():
    # Two identical points and one orthogonal one, temperature 1: similarities 1 (twin) and 0 (the other).
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = np.exp(1) / (np.exp(1) + 1)  # softmax over (1, 0) for each twin
    h_twin = -(a * math.log(a) + (1 - a) * math.log(1 - a))
    h_other = math.log(2)  # the orthogonal point is equally far from both twins
    assert snd_score(x, temperature=1.0) == pytest.approx((2 * h_twin + h_other) / 3)


def test_entropy_prefers_the_confident_predictor():
    for seed in range(3):
        assert entropy_score(_clustered(seed=seed)) > entropy_score(_diffuse(seed=seed)) + 2.0


def test_snd_prefers_the_well_clustered_predictor_where_entropy_cannot_tell():
    for seed in range(3):
        good, bad = _clustered(seed=seed), _scattered_confident(seed=seed)
        assert abs(entropy_score(good) - entropy_score(bad)) < 0.01  # equally confident
        assert snd_score(good) > snd_score(bad) + 0.8
        assert snd_score(good) == pytest.approx(math.log(60 // 4 - 1), abs=0.01)  # 14 equal neighbours each


def test_snd_limitation_diffuse_predictions_also_score_high():
    """Documented failure mode (see validators.py): uniformly diffuse outputs crowd together and look dense."""
    for seed in range(3):
        assert snd_score(_diffuse(seed=seed)) > snd_score(_clustered(seed=seed))


def test_density_ratio_recovers_a_known_gaussian_ratio():
    # Source N(0, 1), target N(1, 1): p_t / p_s = exp(x - 1/2), log-linear, which logistic regression can represent.
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(0, 1, (4000, 1)), rng.normal(1, 1, (2000, 1))
    query = np.linspace(-1, 2, 13)[:, None]
    w = domain_density_ratio(xs, xt, query, C=100.0)
    true = np.exp(query[:, 0] - 0.5)
    assert np.max(np.abs(np.log(w) - np.log(true))) < 0.15


def _shifted_population(rng, n, shift=1.0):
    """Covariate shift with a known ratio; loss l(x) = x^2 + noise, so source risk ~ 1, target risk ~ 1 + shift^2."""
    x = rng.normal(0, 1, n)
    loss = x**2 + rng.normal(0, 0.1, n).clip(-0.5, 0.5)
    weights = np.exp(shift * x - shift**2 / 2)
    return x, np.abs(loss), weights


def test_iwv_estimates_the_target_risk_that_the_source_average_misses():
    rng = np.random.default_rng(1)
    x, loss, w = _shifted_population(rng, 20000)
    target_risk = 2.0
    assert abs(-iwv_score(loss, w) - target_risk) < 0.15
    assert abs(-iwv_score(loss, np.ones_like(w)) - target_risk) > 0.8  # plain source validation is off by ~1
    assert abs(-iwv_score(loss, w, self_normalize=True) - target_risk) < 0.15
    # With estimated ratios (classifier on held-out source features vs target features) the estimate holds up.
    xt = rng.normal(1, 1, 20000)
    w_hat = domain_density_ratio(rng.normal(0, 1, (20000, 1)), xt[:, None], x[:, None])
    assert abs(-iwv_score(loss, w_hat) - target_risk) < 0.2


def test_dev_by_hand_and_its_control_variate():
    loss = np.array([1.0, 2.0, 0.5, 3.0])
    w = np.array([0.5, 1.5, 1.0, 2.0])
    weighted = w * loss
    eta = -np.cov(weighted, w)[0, 1] / np.var(w, ddof=1)
    assert dev_score(loss, w) == pytest.approx(-(weighted.mean() + eta * w.mean() - eta))
    # A constant loss: the control variate removes all of the weights' noise, DEV returns the loss exactly.
    assert dev_score(np.full(4, 0.7), w) == pytest.approx(-0.7)
    assert iwv_score(np.full(4, 0.7), w) == pytest.approx(-0.7 * w.mean())
    # Constant weights: eta = 0 and DEV is the plain weighted mean.
    assert dev_score(loss, np.ones(4)) == pytest.approx(-loss.mean())


def test_dev_is_unbiased_with_lower_variance_than_iwv():
    rng = np.random.default_rng(2)
    iwv, dev = [], []
    for _ in range(300):
        _, loss, w = _shifted_population(rng, 200, shift=1.0)
        loss = 1.0 + 0.2 * loss  # mostly constant: the regime where the weights dominate IWV's variance
        iwv.append(-iwv_score(loss, w))
        dev.append(-dev_score(loss, w))
    iwv, dev = np.array(iwv), np.array(dev)
    target_risk = 1.0 + 0.2 * 2.0
    assert abs(iwv.mean() - target_risk) < 3 * iwv.std() / math.sqrt(300)
    assert abs(dev.mean() - target_risk) < 0.05
    assert dev.std() < 0.5 * iwv.std()


def test_dev_matches_skada_formula_on_the_same_weights():
    """skada's DeepEmbeddedValidation ends with exactly this computation on (N, 1) arrays; recompute it that way."""
    rng = np.random.default_rng(3)
    loss, w = rng.exponential(1.0, (50, 1)), rng.exponential(1.0, (50, 1))
    weighted_error = w * loss
    cov = np.cov(np.concatenate((weighted_error, w), axis=1), rowvar=False)[0, 1]
    eta = -cov / np.var(w, ddof=1)
    skada_dev = np.mean(weighted_error) + eta * np.mean(w) - eta
    assert dev_score(loss[:, 0], w[:, 0]) == pytest.approx(-skada_dev)


def test_cross_entropy_per_example():
    p = np.array([[0.7, 0.3], [0.1, 0.9]])
    np.testing.assert_allclose(cross_entropy_per_example(p, [0, 0]), [-math.log(0.7), -math.log(0.1)])
    np.testing.assert_allclose(cross_entropy_per_example(np.log(p), [1, 1], logits=True), -np.log([0.3, 0.9]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one length"):
        iwv_score([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        dev_score([1.0, 2.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="at least 3"):
        snd_score(np.eye(2))


def test_select_checkpoint_argmax_ties_and_nan():
    scores = {
        "snd": {100: 1.2, 200: 1.5, 300: 1.4},
        "dev": {100: -0.4, 200: -0.7, 300: -0.4},  # tie: the earliest step wins
        "entropy": {100: float("nan"), 200: -0.9, 300: -0.3},
        "iwv": {100: float("nan")},
    }
    assert select_checkpoint(scores) == {"snd": 200, "dev": 100, "entropy": 300}


def test_validators_pick_the_adapted_checkpoint_in_a_constructed_run():
    # Target predictions at three "checkpoints": confidently scattered, halfway, confident and clustered.
    preds = {
        100: _scattered_confident(seed=5),
        200: 0.5 * _scattered_confident(seed=5) + 0.5 * _clustered(seed=5),
        300: _clustered(seed=5),
    }
    scores = {
        "snd": {step: snd_score(p) for step, p in preds.items()},
        "entropy": {step: entropy_score(p) for step, p in preds.items()},
    }
    picks = select_checkpoint(scores)
    assert picks["snd"] == 300
    assert picks["entropy"] in (100, 300) and scores["entropy"][200] < scores["entropy"][300] - 0.5
