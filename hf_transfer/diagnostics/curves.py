"""Data sufficiency: a learning curve on the target (accuracy vs number of labelled rows), a fitted power law, and
how many labels a wanted accuracy would take.

The curve is measured with a cheap learner on frozen features (logistic regression on the model's embeddings):
it answers "how much does the *next* thousand labels buy" at the cost of seconds, and its shape (not its level)
is what the extrapolation uses. The law is the saturating power law of learning curves (Hestness et al. 2017,
"Deep Learning Scaling is Predictable, Empirically"; Figueroa et al. 2012):

    accuracy(n) = a - b * n ** (-c),    a <= 1, b >= 0, c > 0

``a`` is the accuracy the learner tends to with unlimited labels, ``c`` how fast it gets there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..instance._base import check_features, check_labels


@dataclass
class LearningCurve:
    """Measured points (``sizes``, mean ``accuracy`` and its ``std`` over ``repeats`` draws)."""

    sizes: list[int]
    accuracy: list[float]
    std: list[float]
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PowerLaw:
    """``accuracy(n) = a - b * n ** (-c)``."""

    a: float
    b: float
    c: float

    def __call__(self, n) -> np.ndarray:
        return self.a - self.b * np.asarray(n, dtype=np.float64) ** (-self.c)

    def labels_needed(self, accuracy: float) -> float:
        """Smallest ``n`` with ``accuracy(n) >= accuracy``: ``(b / (a - accuracy)) ** (1 / c)``; ``inf`` when the
        fitted ceiling ``a`` is at or below it (no number of labels gets there with this learner)."""
        if accuracy >= self.a:
            return float("inf")
        if self.b <= 0:
            return 1.0
        return float((self.b / (self.a - accuracy)) ** (1.0 / self.c))

    def to_dict(self) -> dict:
        return asdict(self)


def default_sizes(n_available: int, *, num_points: int = 6, smallest: int = 10) -> list[int]:
    """Geometrically spaced training-set sizes from ``smallest`` to ``n_available``."""
    if n_available < smallest:
        raise ValueError(f"a learning curve needs at least {smallest} labelled rows, got {n_available}")
    sizes = np.unique(np.geomspace(smallest, n_available, num_points).round().astype(int))
    return [int(s) for s in sizes]


def learning_curve(
    features,
    labels,
    eval_features,
    eval_labels,
    *,
    sizes: Sequence[int] | None = None,
    repeats: int = 3,
    C: float = 1.0,
    seed: int = 0,
) -> LearningCurve:
    """Accuracy on ``eval_*`` of a logistic regression trained on ``n`` rows drawn from ``features``/``labels``, for
    each ``n`` in ``sizes`` (default :func:`default_sizes`), averaged over ``repeats`` seeded draws. Draws that hold a
    single class are redrawn (a classifier needs two); a draw that cannot get two classes predicts the majority."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = check_features(features, "features")
    y = check_labels(labels, "labels", x.shape[0])
    xe = check_features(eval_features, "eval_features")
    ye = check_labels(eval_labels, "eval_labels", xe.shape[0])
    sizes = default_sizes(len(x)) if sizes is None else [int(s) for s in sizes]
    if any(s < 2 or s > len(x) for s in sizes):
        raise ValueError(f"sizes: each must be in [2, {len(x)}] (the labelled rows available), got {sizes}")
    rng = np.random.default_rng(seed)
    means, stds = [], []
    for n in sizes:
        accs = []
        for _ in range(repeats):
            for _attempt in range(10):
                idx = rng.choice(len(x), n, replace=False)
                if len(np.unique(y[idx])) > 1:
                    break
            if len(np.unique(y[idx])) < 2:
                accs.append(float(np.mean(ye == y[idx][0])))
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
            accs.append(float(np.mean(clf.fit(x[idx], y[idx]).predict(xe) == ye)))
        means.append(float(np.mean(accs)))
        stds.append(float(np.std(accs)))
    return LearningCurve(sizes, means, stds, repeats)


def fit_power_law(sizes: Sequence[float], accuracy: Sequence[float], *, weights: Sequence[float] | None = None
                  ) -> PowerLaw:
    """Least-squares fit of ``a - b n^-c`` with ``scipy.optimize.curve_fit`` (bounds: ``0 <= a <= 1``,
    ``b >= 0``, ``0 < c <= 3``). ``weights``: per-point standard deviations (``sigma``), e.g. the curve's ``std``.
    Needs at least 3 points."""
    from scipy.optimize import curve_fit

    n = np.asarray(sizes, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    if len(n) < 3 or len(n) != len(acc):
        raise ValueError(f"fit_power_law needs >= 3 (size, accuracy) points of equal length, got {len(n)}/{len(acc)}")
    sigma = None
    if weights is not None:
        sigma = np.maximum(np.asarray(weights, dtype=np.float64), 1e-3)  # a zero std would get infinite weight

    def law(size, a, b, c):
        return a - b * size ** (-c)

    start = (min(1.0, acc.max() + 0.01), max((acc.max() - acc.min()) * n.min() ** 0.5, 1e-3), 0.5)
    params, _ = curve_fit(law, n, acc, p0=start, sigma=sigma, bounds=([0.0, 0.0, 1e-3], [1.0, np.inf, 3.0]),
                          maxfev=20000)
    return PowerLaw(*(float(p) for p in params))
