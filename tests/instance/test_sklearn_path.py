"""The backbone-free path: .npz loading, preprocessing, and a weighted classifier under covariate shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from hf_transfer.instance import KLIEP, fit_weighted_classifier, load_features, preprocess_features, preprocess_pair

OFFICE = Path(__file__).resolve().parents[3] / "shared" / "data" / "office_caltech10"


def covariate_shift(seed: int):
    """A curved boundary, a broad source and a target in one corner: a linear model fitted to the whole source
    is wrong in the target's corner, one fitted to the re-weighted source is not (Shimodaira 2000)."""
    rng = np.random.default_rng(seed)
    Xs = rng.normal(0.0, 1.0, (1500, 2))
    Xt = rng.normal([1.5, 0.0], 0.5, (1000, 2))

    def label(X):
        return (X[:, 1] > 0.5 * X[:, 0] ** 2 - 1).astype(int)

    return Xs, label(Xs), Xt, label(Xt)


@pytest.mark.parametrize(
    ("estimator", "kw"),
    [
        ("density_ratio", {"random_state": 0}),
        ("kmm", {"random_state": 0}),
        ("kliep", {"random_state": 0}),
        ("nearest_neighbors", {"metric": "euclidean", "n_neighbors": 10}),
    ],
)
def test_weighting_fixes_a_misspecified_model_under_covariate_shift(estimator, kw):
    Xs, ys, Xt, yt = covariate_shift(0)
    plain, w_plain = fit_weighted_classifier(Xs, ys, Xt, estimator=None)
    weighted, w = fit_weighted_classifier(Xs, ys, Xt, estimator=estimator, **kw)
    np.testing.assert_array_equal(w_plain, np.ones(len(Xs)))
    assert w.shape == (len(Xs),) and (w >= 0).all()
    acc_plain, acc_weighted = plain.score(Xt, yt), weighted.score(Xt, yt)
    assert acc_plain < 0.6  # measured 0.52: the unweighted fit serves the source's bulk
    assert acc_weighted > acc_plain + 0.3  # measured 0.95-0.99


def test_estimator_instances_and_errors():
    Xs, ys, Xt, _ = covariate_shift(1)
    est = KLIEP(gamma=1.0, random_state=0)
    _, w = fit_weighted_classifier(Xs, ys, Xt, estimator=est)
    assert not hasattr(est, "weights_")  # the instance was cloned, not modified
    np.testing.assert_allclose(w, KLIEP(gamma=1.0, random_state=0).fit_weights(Xs, Xt))
    with pytest.raises(ValueError, match="unknown weighting 'kmmm'"):
        fit_weighted_classifier(Xs, ys, Xt, estimator="kmmm")
    with pytest.raises(ValueError, match="ys: has 10 labels"):
        fit_weighted_classifier(Xs, ys[:10], Xt)
    with pytest.raises(ValueError, match="estimator=None takes no arguments"):
        fit_weighted_classifier(Xs, ys, Xt, estimator=None, B=3)
    with pytest.raises(ValueError, match="classifier: Bad.fit does not accept sample_weight"):

        class Bad(LinearSVC):
            def fit(self, X, y):  # noqa: D102 - a classifier without sample_weight
                return super().fit(X, y)

        fit_weighted_classifier(Xs, ys, Xt, estimator=None, classifier=Bad())


def test_preprocessing():
    rng = np.random.default_rng(0)
    Xs = rng.poisson(3.0, (40, 6)).astype(float)
    Xt = rng.poisson(5.0, (30, 6)).astype(float)
    l1z = preprocess_features(Xs, "l1_zscore")
    np.testing.assert_allclose(l1z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(l1z.std(0), 1.0)
    np.testing.assert_allclose(np.linalg.norm(preprocess_features(Xs, "l2"), axis=1), 1.0)
    # shared statistics: the source is standardised, the target keeps its offset relative to the source
    s, t = preprocess_pair(Xs, Xt, "zscore", stats="source")
    np.testing.assert_allclose(s.mean(0), 0.0, atol=1e-12)
    assert (t.mean(0) > 0.5).all()
    s, t = preprocess_pair(Xs, Xt, "zscore", stats="per_domain")
    np.testing.assert_allclose(t.mean(0), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="unknown preprocessing 'minmax'"):
        preprocess_features(Xs, "minmax")


def test_load_features_roundtrip_and_errors(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]))
    X, y = load_features(tmp_path / "d.npz")
    np.testing.assert_array_equal(X, x)
    np.testing.assert_array_equal(y, [0, 1, 0, 1])
    assert X.dtype == np.float64
    np.savez(tmp_path / "bad.npz", features=x)
    with pytest.raises(ValueError, match=r"has no array\(s\) \['x', 'y'\]"):
        load_features(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="no such file"):
        load_features(tmp_path / "missing.npz")


@pytest.mark.skipif(not (OFFICE / "webcam_surf.npz").is_file(), reason="../shared/data not present")
def test_office_caltech_surf_file():
    X, y = load_features(OFFICE / "webcam_surf.npz", preprocess="l1_zscore")
    assert X.shape == (295, 800) and y.shape == (295,)
    assert sorted(np.unique(y).tolist()) == list(range(10))
    np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-9)
