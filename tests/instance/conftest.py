"""Fixtures for the instance-weighting tests: closed-form shifted Gaussians and a one-thread BLAS."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    # The solvers do many small matrix-vector products; on a shared 2-core machine BLAS threads fighting other
    # processes make them several times slower, so the tests run single-threaded.
    with threadpool_limits(limits=1):
        yield


def gaussian_shift(n_s: int, n_t: int, seed: int, shift: float = 0.5):
    """Source N(0, 1), target N(shift, 1) in one dimension, and the true ratio p_t / p_s at the source rows.

    p_t(x) / p_s(x) = exp(-(x - m)^2 / 2 + x^2 / 2) = exp(m x - m^2 / 2).
    """
    rng = np.random.default_rng(seed)
    Xs = rng.normal(0.0, 1.0, (n_s, 1))
    Xt = rng.normal(shift, 1.0, (n_t, 1))
    ratio = np.exp(shift * Xs[:, 0] - shift**2 / 2)
    return Xs, Xt, ratio


@pytest.fixture(scope="module")
def gauss1d():
    return gaussian_shift(800, 800, seed=0)


@pytest.fixture(scope="session")
def make_gaussian_shift():
    return gaussian_shift
