"""Input validation, weight summaries, the mean-1 normalisation and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from hf_transfer.instance import (
    KLIEP,
    KMM,
    DensityRatioClassifier,
    NearestNeighborSelection,
    available_weightings,
    effective_sample_size,
    get_weighting,
    normalize_mean_one,
    register_weighting,
    weight_summary,
)
from hf_transfer.instance.registry import WEIGHTINGS

ESTIMATORS = [
    KMM(random_state=0),
    KLIEP(gamma=1.0, random_state=0),
    DensityRatioClassifier(random_state=0),
    NearestNeighborSelection(),
]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_validation_names_the_argument(est):
    rng = np.random.default_rng(0)
    good = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"Xs and Xt must have the same number of features: Xs has 3, Xt has 4"):
        est.fit(good, rng.normal(size=(20, 4)))
    with pytest.raises(ValueError, match=r"^Xt: is empty"):
        est.fit(good, np.empty((0, 3)))
    with pytest.raises(ValueError, match=r"^Xs: is empty"):
        est.fit(np.empty((0, 3)), good)
    bad = good.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"^Xs: contains NaN or infinity in 1 row"):
        est.fit(bad, good)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"^Xt: contains NaN or infinity"):
        est.fit(good, bad)
    with pytest.raises(ValueError, match=r"^Xs: expected a 2-D array.*reshape"):
        est.fit(good[:, 0], good)
    with pytest.raises(ValueError, match=r"^Xt: expected numeric features"):
        est.fit(good, np.array([["a", "b", "c"]] * 5))


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_torch_input_gives_the_numpy_result(est):
    rng = np.random.default_rng(1)
    Xs, Xt = rng.normal(size=(60, 3)), rng.normal(0.5, 1, size=(50, 3))
    w_np = clone(est).fit_weights(Xs, Xt)
    w_t = clone(est).fit_weights(torch.from_numpy(Xs), torch.from_numpy(Xt))
    assert isinstance(w_t, np.ndarray) and w_t.dtype == np.float64 and w_t.shape == (60,)
    np.testing.assert_allclose(w_t, w_np, rtol=1e-10, atol=1e-12)
    assert (w_np >= 0).all()


def test_effective_sample_size_closed_forms():
    assert effective_sample_size(np.ones(50)) == pytest.approx(50.0)
    assert effective_sample_size(np.r_[1.0, np.zeros(9)]) == pytest.approx(1.0)
    # half the rows with weight 2, half with 0: (n)^2 / (4 n / 2) = n / 2
    assert effective_sample_size(np.r_[np.full(10, 2.0), np.zeros(10)]) == pytest.approx(10.0)
    # (1 + 3)^2 / (1 + 9) = 1.6
    assert effective_sample_size([1.0, 3.0]) == pytest.approx(1.6)
    with pytest.raises(ValueError, match="non-negative"):
        effective_sample_size([1.0, -1.0])
    with pytest.raises(ValueError, match="empty"):
        effective_sample_size([])


def test_weight_summary():
    s = weight_summary(np.array([0.0, 1.0, 2.0, 1.0]))
    assert s == {
        "n": 4,
        "ess": pytest.approx(16 / 6),
        "ess_ratio": pytest.approx(16 / 24),
        "mean": 1.0,
        "min": 0.0,
        "max": 2.0,
        "n_zero": 1,
    }


def test_normalize_mean_one_caps_exactly():
    rng = np.random.default_rng(0)
    raw = rng.lognormal(0, 2, 1000)
    out = normalize_mean_one(raw, max_weight=5.0)
    assert out.mean() == pytest.approx(1.0, abs=1e-12)
    assert out.max() <= 5.0 + 1e-12
    assert np.isclose(out, 5.0).sum() > 0  # the cap is active on this heavy-tailed input
    # order is preserved and uncapped rows keep their ratios
    free = out < 5.0 - 1e-9
    ratios = out[free] / raw[free]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)
    assert np.all(np.diff(out[np.argsort(raw)]) >= -1e-12)
    np.testing.assert_allclose(normalize_mean_one(np.array([1.0, 3.0])), [0.5, 1.5])
    with pytest.raises(ValueError, match="too small"):
        normalize_mean_one(np.array([5.0, 0.0, 0.0, 0.0]), max_weight=2.0)


def test_registry():
    assert available_weightings() == ["density_ratio", "kliep", "kmm", "nearest_neighbors"]
    est = get_weighting("kmm", B=10.0, random_state=0)
    assert isinstance(est, KMM) and est.B == 10.0
    assert isinstance(get_weighting("nearest_neighbors", mode="top_fraction"), NearestNeighborSelection)
    with pytest.raises(ValueError, match=r"unknown weighting 'kmn'; did you mean 'kmm'\?"):
        get_weighting("kmn")
    with pytest.raises(
        ValueError, match=r"density_ratio: unknown argument 'max_weigth' \(did you mean 'max_weight'\?\)"
    ):
        get_weighting("density_ratio", max_weigth=3)

    class Uniform(KMM):
        def _fit(self, Xs, Xt):
            return np.ones(Xs.shape[0])

    try:
        register_weighting("uniform", Uniform)
        assert get_weighting("uniform").fit_weights(np.zeros((3, 1)), np.zeros((2, 1))).tolist() == [1.0] * 3
        with pytest.raises(ValueError, match="already registered"):
            register_weighting("uniform", Uniform)
        with pytest.raises(TypeError):
            register_weighting("bad", dict)
    finally:
        WEIGHTINGS.pop("uniform", None)


def test_sklearn_params_roundtrip():
    est = DensityRatioClassifier(C=0.1, max_weight=5.0)
    assert est.get_params()["C"] == 0.1
    assert clone(est).set_params(max_weight=3.0).max_weight == 3.0
    with pytest.raises(RuntimeError, match="not fitted"):
        est.summary()
