"""Instance-based transfer: weight (or select) source rows so that the weighted source looks like the target.

Estimators follow scikit-learn conventions: construct with keyword arguments, ``fit(Xs, Xt)`` on source features
(n_s, d) and target features (n_t, d) (NumPy arrays or torch tensors), read ``weights_`` (n_s,), non-negative.

=============================  ==========================================================  ===================
name (``get_weighting``)       class                                                       scales to
=============================  ==========================================================  ===================
``"density_ratio"``            :class:`DensityRatioClassifier` (domain classifier odds)    millions of rows
``"kmm"``                      :class:`KMM` (kernel mean matching QP)                      ~1e5 rows (Nystroem)
``"kliep"``                    :class:`KLIEP` (KL importance estimation, CV'd width)       ~1e5 rows
``"nearest_neighbors"``        :class:`NearestNeighborSelection` (kNN votes / top-k keep)   ~1e5 x 1e5 rows
=============================  ==========================================================  ===================

:class:`TrAdaBoost` covers the case with a few labelled target rows (``fit(Xs, ys, Xt, yt)``).
"""

from ._base import BaseWeighting, check_pair, effective_sample_size, normalize_mean_one, weight_summary
from .density_ratio import DensityRatioClassifier
from .kliep import KLIEP
from .kmm import KMM
from .neighbors import NearestNeighborSelection
from .registry import WEIGHTINGS, available_weightings, get_weighting, register_weighting
from .sklearn_path import fit_weighted_classifier, load_features, preprocess_features, preprocess_pair
from .tradaboost import TrAdaBoost

__all__ = [
    "KLIEP",
    "KMM",
    "WEIGHTINGS",
    "BaseWeighting",
    "DensityRatioClassifier",
    "NearestNeighborSelection",
    "TrAdaBoost",
    "available_weightings",
    "check_pair",
    "effective_sample_size",
    "fit_weighted_classifier",
    "get_weighting",
    "load_features",
    "normalize_mean_one",
    "preprocess_features",
    "preprocess_pair",
    "register_weighting",
    "weight_summary",
]
