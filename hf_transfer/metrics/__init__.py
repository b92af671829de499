"""Evaluation metrics through the ``evaluate`` library, offline first, with bootstrap intervals.

* :mod:`~hf_transfer.metrics.registry`: metric names; the shipped ``evaluate`` modules (accuracy, F1, precision,
  recall, entity-level seqeval) and Hub names;
* :mod:`~hf_transfer.metrics.suite`: :func:`build_compute_metrics` (a recipe's ``metrics`` as the Trainer's
  ``compute_metrics``) and intervals;
* :mod:`~hf_transfer.metrics.functional`: the NumPy arithmetic, vectorised over bootstrap resamples;
* :mod:`~hf_transfer.metrics.bootstrap`: seeded percentile bootstrap.
"""

from .bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, bootstrap_intervals, percentile_interval
from .registry import (
    DEFAULT_CLASSIFICATION_METRICS,
    DEFAULT_TOKEN_CLASSIFICATION_METRICS,
    available_metrics,
    check_metric_names,
    load_module,
)
from .suite import MetricSuite, build_compute_metrics, with_intervals

__all__ = [
    "DEFAULT_CLASSIFICATION_METRICS",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "DEFAULT_TOKEN_CLASSIFICATION_METRICS",
    "MetricSuite",
    "available_metrics",
    "bootstrap_intervals",
    "build_compute_metrics",
    "check_metric_names",
    "load_module",
    "percentile_interval",
    "with_intervals",
]
