"""``method: mmd`` — multi-kernel maximum mean discrepancy between source and target features (DAN, Long et al.
2015, "Learning Transferable Features with Deep Adaptation Networks", ICML), and with ``joint: true`` the joint MMD
over features and predictions (JAN, Long et al. 2017, "Deep Transfer Learning with Joint Adaptation Networks",
ICML).

Kernel: ``k(x, y) = sum_m exp(-||x - y||^2 / (m * b))`` over ``kernel_multipliers`` ``m``, with the base bandwidth
``b`` the mean squared distance between distinct rows of the pooled source+target batch (detached, recomputed each
step), as DAN's reference code does; ``bandwidth`` fixes ``b`` instead. JMMD multiplies it by a Gaussian kernel on
the softmax outputs, ``exp(-||p - p'||^2 / prediction_bandwidth)`` (1.68 in JAN's reference code).

Estimators of MMD^2 (Gretton et al. 2012, "A Kernel Two-Sample Test", JMLR 13):

* ``quadratic``: the **unbiased U-statistic** (eq. 3 there; diagonal terms left out), O(n^2). Its expectation is
  exactly MMD^2, so it is ~0 (and can be slightly negative) when the two samples come from one distribution.
* ``linear``: the unbiased linear-time statistic (Lemma 14 there; DAN eq. 5) over disjoint consecutive pairs
  ``(s_2i, s_2i+1, t_2i, t_2i+1)``; it uses ``2*floor(min(n_s, n_t)/2)`` rows of each side. Noisier, O(n).

Under data parallelism the trainer hands every method the global batch (:mod:`hf_transfer.distributed`), so the
estimate is over all processes' rows, as one process with the same global batch would compute it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import RecipeError
from ._layers import (
    at_least,
    check_choice,
    check_positive,
    check_trade_off,
    full_precision,
    mean_pairwise_squared_distance,
    multi_gaussian_kernel,
    side_weights,
    squared_distances,
)
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import register_method

ESTIMATORS = ("quadratic", "linear")


def _default_multipliers() -> list[float]:
    return [0.25, 0.5, 1.0, 2.0, 4.0]


@dataclass
class MMDConfig(MethodConfig):
    """Fields of ``mmd``: estimator, kernel family and the JMMD switch."""

    estimator: Literal["quadratic", "linear"] = field(
        default="quadratic",
        metadata={
            "help": "MMD^2 estimator: 'quadratic' is the unbiased U-statistic over all pairs (O(n^2)); 'linear' is "
            "the unbiased linear-time statistic of Gretton et al. 2012 used by DAN (O(n), noisier)."
        },
    )
    kernel_multipliers: list[float] = field(
        default_factory=_default_multipliers,
        metadata={
            "help": "Gaussian kernels exp(-d^2/(m*b)) are summed over these multipliers m of the base bandwidth b "
            "(DAN: 5 kernels, factor 2 apart, centred on b)."
        },
    )
    bandwidth: float | None = field(
        default=None,
        metadata={
            "help": "Fixed base bandwidth b in squared-distance units; default: the mean squared distance between "
            "rows of the pooled source+target batch, recomputed each step."
        },
    )
    joint: bool = field(
        default=False,
        metadata={
            "help": "Joint MMD (JAN): multiply the feature kernel by a Gaussian kernel on the softmax predictions, "
            "aligning the joint distribution of features and predictions."
        },
    )
    prediction_bandwidth: float = field(
        default=1.68,
        metadata={"help": "With joint: true, the kernel on predictions is exp(-||p-p'||^2 / prediction_bandwidth)."},
    )

    def __post_init__(self):
        check_trade_off("mmd", self.trade_off)
        check_choice("mmd.estimator", self.estimator, ESTIMATORS)
        if not self.kernel_multipliers:
            raise RecipeError("mmd.kernel_multipliers: must list at least one multiplier")
        for m in self.kernel_multipliers:
            check_positive("mmd.kernel_multipliers", m)
        if self.bandwidth is not None:
            check_positive("mmd.bandwidth", self.bandwidth)
        check_positive("mmd.prediction_bandwidth", self.prediction_bandwidth)


def mmd2(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    estimator: str = "quadratic",
    kernel_multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    bandwidth: float | torch.Tensor | None = None,
    source_predictions: torch.Tensor | None = None,
    target_predictions: torch.Tensor | None = None,
    prediction_bandwidth: float = 1.68,
) -> torch.Tensor:
    """Unbiased estimate of (joint) MMD^2 between ``source (n_s, D)`` and ``target (n_t, D)``.

    With ``source_predictions``/``target_predictions`` (``(n, C)`` probabilities) the kernel is the JMMD product
    kernel. Needs at least 2 rows on each side (raises ``ValueError`` otherwise; the method guards for it).
    """
    ns, nt = source.shape[0], target.shape[0]
    if ns < 2 or nt < 2:
        raise ValueError(f"mmd2 needs >= 2 rows per side, got {ns} source and {nt} target")
    domain = torch.cat([source.new_zeros(ns, dtype=torch.long), source.new_ones(nt, dtype=torch.long)])
    predictions = None if source_predictions is None else torch.cat([source_predictions, target_predictions])
    return mmd2_by_domain(
        torch.cat([source, target]),
        domain,
        estimator=estimator,
        kernel_multipliers=kernel_multipliers,
        bandwidth=bandwidth,
        predictions=predictions,
        prediction_bandwidth=prediction_bandwidth,
    )


def mmd2_by_domain(
    features: torch.Tensor,
    domain: torch.Tensor,
    *,
    estimator: str = "quadratic",
    kernel_multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    bandwidth: float | torch.Tensor | None = None,
    predictions: torch.Tensor | None = None,
    prediction_bandwidth: float = 1.68,
) -> torch.Tensor:
    """:func:`mmd2` between the rows of ``features (B, D)`` with ``domain`` 0 and those with ``domain`` 1, in any
    order, without reading a row count on the host (so a training step never waits on the device here).

    Rows are weighted by their side rather than selected. The linear estimator pairs rows in their order within
    each side, as :func:`mmd2` does on the selected rows. With fewer than 2 rows on a side the result is 0 (still
    attached to the graph), where :func:`mmd2` raises.
    """
    s, t = side_weights(domain, features.dtype)
    ns, nt = s.sum(), t.sum()
    # Each estimate below is finite with too few rows (denominators clamped); the flag then zeroes it.
    enough = at_least(ns, 2) * at_least(nt, 2)
    if bandwidth is None:
        bandwidth = mean_pairwise_squared_distance(features)
    bandwidth = torch.as_tensor(bandwidth, dtype=features.dtype, device=features.device).clamp_min(1e-12)

    def kernel(sq_feat: torch.Tensor, sq_pred: torch.Tensor | None) -> torch.Tensor:
        k = multi_gaussian_kernel(sq_feat, bandwidth, kernel_multipliers)
        return k * torch.exp(-sq_pred / prediction_bandwidth) if sq_pred is not None else k

    if estimator == "quadratic":
        sq_pred = None if predictions is None else squared_distances(predictions, predictions)
        k = kernel(squared_distances(features, features), sq_pred)
        diagonal = k.diagonal()
        xx = (s @ k @ s - (s * diagonal).sum()) / (ns * (ns - 1)).clamp_min(1)
        yy = (t @ k @ t - (t * diagonal).sum()) / (nt * (nt - 1)).clamp_min(1)
        xy = (s @ k @ t) / (ns * nt).clamp_min(1)
        return (xx + yy - 2.0 * xy) * enough
    if estimator == "linear":
        # Sort the source rows first (stable: each side keeps its order); pair i is source rows 2i, 2i+1 and target
        # rows n_s + 2i, n_s + 2i + 1, for i < m = floor(min(n_s, n_t) / 2). Indices past the end are clamped and
        # their pairs weigh 0.
        order = torch.argsort(domain, stable=True)
        rows = features[order]
        preds = None if predictions is None else predictions[order]
        n_rows = features.shape[0]
        i = torch.arange(n_rows // 2, device=features.device)
        m = torch.minimum(ns, nt).long() // 2
        first_target = ns.long()
        s1, s2 = 2 * i, 2 * i + 1
        t1, t2 = (first_target + 2 * i).clamp_max(n_rows - 1), (first_target + 2 * i + 1).clamp_max(n_rows - 1)

        def pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            sq_pred = None if preds is None else ((preds[a] - preds[b]) ** 2).sum(1)
            return kernel(((rows[a] - rows[b]) ** 2).sum(1), sq_pred)

        h = pair(s1, s2) + pair(t1, t2) - pair(s1, t2) - pair(s2, t1)
        used = (i < m).to(features.dtype)
        return (h * used).sum() / m.clamp_min(1).to(features.dtype) * enough
    raise ValueError(f"unknown MMD estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


class MMD(TransferMethod):
    """MK-MMD (DAN) or JMMD (JAN) between the source and target rows of ``batch.features``.

    Logs ``bandwidth`` (the base bandwidth used); the trainer logs the estimate itself as ``mmd/loss``. A batch with
    fewer than 2 rows on a side gives an attached zero (see :func:`mmd2_by_domain`).
    """

    needs_target = True

    def forward(self, batch: StepBatch) -> MethodOutput:
        c: MMDConfig = self.config
        with full_precision(batch.features):
            features = batch.features.float()
            bandwidth = c.bandwidth
            if bandwidth is None:
                bandwidth = mean_pairwise_squared_distance(features)
            loss = mmd2_by_domain(
                features,
                batch.domain,
                estimator=c.estimator,
                kernel_multipliers=c.kernel_multipliers,
                bandwidth=bandwidth,
                predictions=batch.logits.float().softmax(-1) if c.joint else None,
                prediction_bandwidth=c.prediction_bandwidth,
            )
        return MethodOutput(loss, {"bandwidth": torch.as_tensor(bandwidth).detach()})


register_method("mmd", MMDConfig, MMD)
