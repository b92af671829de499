"""Percentile bootstrap intervals over evaluation rows, seeded and vectorised.

Resample ``b`` draws ``n`` row indices with replacement (``numpy.random.default_rng(seed).integers(0, n, (B, n))``,
drawn in chunks of resamples so memory stays bounded; the draws are the same as one ``(B, n)`` draw). A metric scores
all resamples of a chunk at once (e.g. from ``(B, K, K)`` confusion matrices), and the interval is the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the ``B`` replicates (``numpy.percentile``,
linear interpolation): the same as ``scipy.stats.bootstrap(..., method="percentile")`` on the same resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
# Resample row indices held at once (int64): 8 M of them is 64 MB, whatever the evaluation's size.
MAX_INDICES_PER_CHUNK = 8_000_000


def resample_indices(num_rows: int, num_resamples: int, *, seed: int = 0,
                     max_indices: int = MAX_INDICES_PER_CHUNK) -> Iterator[np.ndarray]:
    """Yield ``(b, num_rows)`` arrays of row indices, ``num_resamples`` rows in all, from one seeded generator."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, max_indices // max(num_rows, 1))
    done = 0
    while done < num_resamples:
        size = min(per_chunk, num_resamples - done)
        yield rng.integers(0, num_rows, size=(size, num_rows))
        done += size


def percentile_interval(replicates: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates ``(B,)``."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(np.asarray(replicates, dtype=np.float64), [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_intervals(
    num_rows: int,
    score_resamples: Callable[[np.ndarray], dict[str, np.ndarray]],
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    max_indices: int = MAX_INDICES_PER_CHUNK,
) -> dict[str, tuple[float, float]]:
    """``{key: (low, high)}`` for every key ``score_resamples`` returns.

    Args:
        num_rows: rows in the evaluation (examples; sentences for entity metrics).
        score_resamples: maps ``(b, num_rows)`` row indices to ``{key: (b,) replicate values}``.
        num_resamples: ``B``, the number of bootstrap resamples.
        confidence: the interval's coverage, e.g. 0.95.
        seed: the generator's seed; the same seed gives the same resamples and so the same interval.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_rows < 1 or num_resamples < 1:
        return {}
    chunks: dict[str, list[np.ndarray]] = {}
    for indices in resample_indices(num_rows, num_resamples, seed=seed, max_indices=max_indices):
        for key, values in score_resamples(indices).items():
            chunks.setdefault(key, []).append(np.asarray(values, dtype=np.float64))
    return {key: percentile_interval(np.concatenate(parts), confidence) for key, parts in chunks.items()}
