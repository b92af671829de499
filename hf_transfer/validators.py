"""Label-free model selection for domain adaptation: score checkpoints without target labels.

Every score here follows one sign convention: **higher is better**. Scores that estimate a risk (IWV, DEV) are
returned negated; entropy is returned negated; SND is already "higher is better". So picking a checkpoint is always
an argmax (:func:`select_checkpoint`).

All functions are pure: they take numpy arrays or torch tensors (converted to float64 numpy) and return a float (or,
for :func:`domain_density_ratio`, an array). None of them needs target labels.

=========================  ====================================================================================
score                      reads
=========================  ====================================================================================
``entropy_score``          target predictions; ``-mean H(p)`` (Morerio et al. 2018)
``snd_score``              target predictions; soft neighbourhood density (Saito et al. 2021)
``iwv_score``              per-example source-validation losses and density ratios (Sugiyama et al. 2007)
``dev_score``              the same, with DEV's control variate (You et al. 2019)
=========================  ====================================================================================

Known failure modes, worth knowing before trusting one score: entropy and SND reward a model that predicts one
class with confidence for every target row (collapse); SND also scores uniformly *diffuse* outputs highly, since they
crowd together on the simplex and look dense, so read it beside entropy; IWV and DEV are only as good as the
density ratios, which degrade when the domains barely overlap (ratios explode; DEV's control variate tames part of
the variance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "cross_entropy_per_example",
    "dev_score",
    "domain_density_ratio",
    "entropy_score",
    "iwv_score",
    "select_checkpoint",
    "snd_score",
]


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _probabilities(x: Any, logits: bool) -> np.ndarray:
    arr = _as_numpy(x)
    if arr.ndim != 2:
        raise ValueError(f"expected a (n, num_classes) array, got shape {arr.shape}")
    return _softmax(arr) if logits else arr


def cross_entropy_per_example(probs: Any, labels: Any, *, logits: bool = False, eps: float = 1e-15) -> np.ndarray:
    """``-log p[y]`` per row: the per-example loss IWV and DEV weight. ``logits=True`` applies a softmax first."""
    p = _probabilities(probs, logits)
    y = _as_numpy(labels).astype(np.int64)
    return -np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))


def entropy_score(probs: Any, *, logits: bool = False) -> float:
    """Negative mean prediction entropy (nats) of ``(n, C)`` target predictions. Higher (closer to 0) is better.

    Morerio et al. 2018 ("Minimal-entropy correlation alignment", ICLR) select by target entropy: a model that is
    confident on the target data is more likely to have adapted to it. ``logits=True`` applies a softmax first.
    """
    p = _probabilities(probs, logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return float(terms.sum(axis=1).mean())


def snd_score(probs: Any, *, temperature: float = 0.05, logits: bool = False) -> float:
    """Soft neighbourhood density (Saito et al. 2021, "Tune it the Right Way", ICCV). Higher is better.

    Rows (target softmax outputs, as in the paper; any ``(n, k)`` representation works) are L2-normalised; each
    row's cosine similarities to the *other* rows, divided by ``temperature`` (0.05 in the paper), go through a
    softmax; SND is the mean entropy of those distributions. It is high when each target point has many close
    neighbours, i.e. when the predictions form dense clusters.
    """
    x = _probabilities(probs, logits)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"snd_score needs at least 3 rows, got {n}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T / temperature
    np.fill_diagonal(sim, -np.inf)  # a point is not its own neighbour
    sim -= sim.max(axis=1, keepdims=True)
    log_p = sim - np.log(np.exp(sim).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * log_p, 0.0)
    return float(-terms.sum(axis=1).mean())


def domain_density_ratio(
    source_features: Any,
    target_features: Any,
    query_features: Any | None = None,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    standardize: bool = True,
    random_state: int | None = 0,
) -> np.ndarray:
    """Density ratios ``w(x) = p_target(x) / p_source(x)`` estimated with a logistic-regression domain classifier.

    The classifier learns ``P(target | x)`` from the two samples; by Bayes,
    ``w(x) = (n_s / n_t) * P(target | x) / P(source | x)`` (Bickel et al. 2007; the estimator DEV uses). Returns
    ``w`` at ``query_features`` (default: at ``source_features``). Fit it on features that were *not* used to
    compute the validation losses (DEV: a held-out split of the source data) to keep the estimate honest.

    Args:
        C: inverse L2 regularisation of the logistic regression.
        standardize: z-score the features (statistics of the pooled training rows) before fitting.
    """
    from sklearn.linear_model import LogisticRegression

    xs, xt = _as_numpy(source_features), _as_numpy(target_features)
    xq = xs if query_features is None else _as_numpy(query_features)
    x = np.concatenate([xs, xt])
    y = np.concatenate([np.zeros(len(xs)), np.ones(len(xt))])
    if standardize:
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 0, std, 1.0)
        x, xq = (x - mean) / std, (xq - mean) / std
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=random_state).fit(x, y)
    # log P(t|x) - log P(s|x) is the decision function: exponentiating it avoids dividing by a tiny probability.
    return (len(xs) / len(xt)) * np.exp(clf.decision_function(xq))


def iwv_score(losses: Any, weights: Any, *, self_normalize: bool = False) -> float:
    """Importance-weighted validation (Sugiyama et al. 2007, "Covariate Shift Adaptation by Importance Weighted
    Cross Validation", JMLR 8). Higher is better: returns ``-mean(w * loss)``.

    ``losses``: per-example losses of the model on labelled *source validation* rows; ``weights``: their density
    ratios ``p_t(x)/p_s(x)``. ``mean(w * loss)`` is an unbiased estimate of the target risk under covariate shift.
    ``self_normalize=True`` uses ``sum(w * loss) / sum(w)`` instead (biased, lower variance).
    """
    loss, w = _check_pair(losses, weights)
    risk = (w * loss).sum() / w.sum() if self_normalize else (w * loss).mean()
    return float(-risk)


def dev_score(losses: Any, weights: Any) -> float:
    """Deep embedded validation (You et al. 2019, "Towards Accurate Model Selection in Deep Unsupervised Domain
    Adaptation", ICML). Higher is better: returns ``-DEV``.

    With ``L = w * loss``: ``DEV = mean(L) + eta * mean(w) - eta``, ``eta = -Cov(L, w) / Var(w)``. Since
    ``E[w] = 1`` under the source distribution, ``eta * (mean(w) - 1)`` is a zero-mean control variate: DEV keeps
    IWV's expectation and cancels the part of its variance that is explained by the weights. ``eta = 0`` when the
    weights are constant.
    """
    loss, w = _check_pair(losses, weights)
    weighted = w * loss
    var_w = np.var(w, ddof=1) if len(w) > 1 else 0.0
    eta = 0.0 if var_w == 0 else -np.cov(weighted, w, ddof=1)[0, 1] / var_w
    return float(-(weighted.mean() + eta * w.mean() - eta))


def _check_pair(losses: Any, weights: Any) -> tuple[np.ndarray, np.ndarray]:
    loss, w = _as_numpy(losses).reshape(-1), _as_numpy(weights).reshape(-1)
    if loss.shape != w.shape or len(loss) == 0:
        raise ValueError(f"losses and weights must be non-empty and of one length, got {loss.shape} and {w.shape}")
    if (w < 0).any():
        raise ValueError("density-ratio weights must be >= 0")
    return loss, w


def select_checkpoint(scores: Mapping[str, Mapping[int, float]]) -> dict[str, int]:
    """The step each validator picks: the argmax of its scores (all validators here are higher-is-better).

    ``scores`` maps a validator name to ``{step: score}``. NaN scores are skipped; ties go to the earliest step.
    A validator with no finite score is left out of the result.

    >>> select_checkpoint({"snd": {100: 1.2, 200: 1.5}, "dev": {100: -0.4, 200: -0.7}})
    {'snd': 200, 'dev': 100}
    """
    picks: dict[str, int] = {}
    for name, by_step in scores.items():
        finite = [(step, float(s)) for step, s in by_step.items() if s is not None and math.isfinite(float(s))]
        if finite:
            picks[name] = max(sorted(finite), key=lambda item: item[1])[0]
    return picks
