"""Few-shot evaluation: the 95% interval formula, and episodes scored on a tiny model."""

import math

import numpy as np
import pytest
from scipy import stats

from hf_transfer.meta import mean_confidence_interval


def test_interval_by_hand():
    values = [0.5, 0.6, 0.7, 0.8]
    mean, half = mean_confidence_interval(values)
    # s = sqrt((0.15^2 + 0.05^2 + 0.05^2 + 0.15^2) / 3) = sqrt(0.05 / 3); t_{0.975, 3} = 3.182446305284263
    assert mean == pytest.approx(0.65)
    assert half == pytest.approx(3.182446305284263 * math.sqrt(0.05 / 3) / 2, rel=1e-9)


def test_interval_matches_scipy():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.4, 0.9, size=20)
    mean, half = mean_confidence_interval(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert (mean - half, mean + half) == pytest.approx((lo, hi), rel=1e-9)
    assert mean_confidence_interval([0.7] * 5) == (pytest.approx(0.7), 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        mean_confidence_interval([0.5])
