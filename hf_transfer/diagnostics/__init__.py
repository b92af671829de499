"""Diagnostics and advice: how far apart two domains are, how well a model or a source will transfer, how many
labels would help, what drives the predictions, and which method to use. See ``docs/diagnostics.md``.

=======================  =====================================================================================
module                   what
=======================  =====================================================================================
``features``             bounded seeded samples of a domain, batched frozen embeddings
``distance``             MMD^2 + permutation p-value (median-heuristic kernel), proxy A-distance, CORAL distance
``transferability``      LogME, H-score, LEEP, NCE; ranking of candidate models or sources
``curves``               learning curve on the target, fitted power law, labels needed for an accuracy
``interpret``            nearest source rows of target errors, most target-like source rows, gradient x input
``advisor``              rules from the measurements to a method, settings and reasons
``plots``                t-SNE, learning curve, ranking bars, domain heatmap (PNG, matplotlib Agg)
``report``               :func:`diagnose`: all of the above, written as diagnostics.json, PNGs and report.html
=======================  =====================================================================================
"""

from .advisor import Advice, Measurements, Thresholds, advise
from .curves import LearningCurve, PowerLaw, fit_power_law, learning_curve
from .distance import ADistanceResult, MMDResult, coral_distance, domain_distances, mmd_test, proxy_a_distance
from .features import DomainSample, extract_features, load_domain, load_encoder
from .interpret import nearest_source_neighbours, token_attributions, top_weighted_sources
from .report import DiagnosticsReport, diagnose
from .transferability import (
    SCORES,
    hscore,
    leep,
    logme,
    nce,
    rank_candidates,
    source_classifier_outputs,
    transferability_scores,
)

__all__ = [
    "SCORES",
    "ADistanceResult",
    "Advice",
    "DiagnosticsReport",
    "DomainSample",
    "LearningCurve",
    "MMDResult",
    "Measurements",
    "PowerLaw",
    "Thresholds",
    "advise",
    "coral_distance",
    "diagnose",
    "domain_distances",
    "extract_features",
    "fit_power_law",
    "hscore",
    "learning_curve",
    "leep",
    "load_domain",
    "load_encoder",
    "logme",
    "mmd_test",
    "nce",
    "nearest_source_neighbours",
    "proxy_a_distance",
    "rank_candidates",
    "source_classifier_outputs",
    "token_attributions",
    "top_weighted_sources",
    "transferability_scores",
]
