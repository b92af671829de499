"""Density ratio by probabilistic classification (Qin 1998; Bickel, Brueckner & Scheffer, ICML 2007)."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from ._base import BaseWeighting, check_features, normalize_mean_one


class DensityRatioClassifier(BaseWeighting):
    r"""Importance weights from a probabilistic domain classifier; the scalable default.

    A classifier learns ``P(target | x)`` from source rows (label 0) and target rows (label 1). By Bayes' rule

    .. math::
        \frac{p_t(x)}{p_s(x)} = \frac{P(t \mid x)}{P(s \mid x)} \cdot \frac{n_s}{n_t},

    the second factor undoing the class prior of the pooled training set. Probabilities are clipped to
    ``[clip_proba, 1 - clip_proba]`` (a confident classifier would otherwise give ratios of 0 or infinity), the
    ratios are raised to ``power`` (Shimodaira's flattening: 1 = unbiased, 0 = uniform, in between trades bias for
    variance), then scaled to mean 1 with every weight capped at ``max_weight`` (the scale is solved so that the
    mean is exactly 1 after capping, see :func:`~hf_transfer.instance._base.normalize_mean_one`).

    Cost is one classifier fit (``cv`` fits when cross-fitting): for the default logistic regression, linear in
    the number of rows, so this is the estimator to use beyond a few thousand rows.

    Parameters
    ----------
    classifier : scikit-learn classifier or None
        Any estimator with ``fit`` and ``predict_proba`` (cloned, never modified). None: ``StandardScaler`` +
        ``LogisticRegression(C=C, max_iter=1000)``; a linear log-ratio is exact for Gaussian shifts with shared
        covariance and a robust first choice for embeddings.
    C : float, default 1.0
        Inverse regularisation of the default logistic regression (ignored when ``classifier`` is given).
    cv : int or None, default None
        If an int >= 2, cross-fitting: each row's probability comes from a classifier that did not see it
        (stratified folds). Use it when the classifier can memorise rows (high dimension, few rows, flexible
        models): in-sample probabilities are then overconfident, ``domain_auc_`` reports near-perfect separation
        even between identical domains, and the weights reflect memorisation rather than the shift.
    clip_proba : float, default 1e-3
        Probabilities are clipped to ``[clip_proba, 1 - clip_proba]`` before the ratio.
    max_weight : float or None, default 20.0
        Cap on the final mean-1 weights (>= 1). None: no cap.
    power : float, default 1.0
        Exponent applied to the ratios before normalisation (0 <= power).
    random_state : int, RandomState or None
        Seeds the folds of ``cv`` (and the classifier, when it has a ``random_state`` parameter).
    verbose : bool, default False
        Show a tqdm progress bar over the folds.

    Attributes
    ----------
    weights_ : np.ndarray, shape (n_s,)
        Mean-1 importance weights of the source rows.
    ratio_ : np.ndarray, shape (n_s,)
        Raw ratio estimate ``P(t|x) / P(s|x) * n_s / n_t`` before flattening, capping and normalisation.
    proba_target_ : np.ndarray, shape (n_s + n_t,)
        ``P(target | x)`` for the source rows then the target rows (out-of-fold when ``cv`` is set).
    domain_auc_ : float
        ROC AUC of the domain classifier on those probabilities: 0.5 = domains indistinguishable, 1 = separable
        (in-sample, so optimistic, when ``cv`` is None).
    classifier_ : estimator or list of estimators
        The fitted classifier (one per fold when ``cv`` is set).
    scale_ : float
        The factor that made the flattened ratios mean 1 (before the cap); :meth:`predict_weights` reuses it.
    """

    def __init__(
        self,
        *,
        classifier=None,
        C: float = 1.0,
        cv: int | None = None,
        clip_proba: float = 1e-3,
        max_weight: float | None = 20.0,
        power: float = 1.0,
        random_state=None,
        verbose: bool = False,
    ):
        self.classifier = classifier
        self.C = C
        self.cv = cv
        self.clip_proba = clip_proba
        self.max_weight = max_weight
        self.power = power
        self.random_state = random_state
        self.verbose = verbose

    def _make_classifier(self, seed: int):
        if self.classifier is None:
            return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=1000))
        if not hasattr(self.classifier, "predict_proba"):
            raise ValueError(f"classifier: {type(self.classifier).__name__} has no predict_proba")
        clf = clone(self.classifier)
        if "random_state" in clf.get_params():
            clf.set_params(random_state=seed)
        return clf

    def _fit(self, Xs: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        if not 0 < self.clip_proba < 0.5:
            raise ValueError(f"clip_proba: must be in (0, 0.5), got {self.clip_proba}")
        if self.max_weight is not None and self.max_weight < 1:
            raise ValueError(f"max_weight: must be >= 1 (the weights have mean 1), got {self.max_weight}")
        if self.power < 0:
            raise ValueError(f"power: must be >= 0, got {self.power}")
        n_s, n_t = Xs.shape[0], Xt.shape[0]
        rng = check_random_state(self.random_state)
        X = np.vstack([Xs, Xt])
        d = np.r_[np.zeros(n_s, dtype=np.int64), np.ones(n_t, dtype=np.int64)]
        p = np.empty(X.shape[0], dtype=np.float64)
        if self.cv is None:
            clf = self._make_classifier(rng.randint(2**31 - 1)).fit(X, d)
            p[:] = self._proba_target(clf, X)
            self.classifier_ = clf
        else:
            if self.cv < 2 or self.cv > min(n_s, n_t):
                raise ValueError(f"cv: need 2 <= cv <= min(n_s, n_t) = {min(n_s, n_t)}, got {self.cv}")
            folds = StratifiedKFold(self.cv, shuffle=True, random_state=rng.randint(2**31 - 1)).split(X, d)
            self.classifier_ = []
            for train, test in tqdm(folds, total=self.cv, desc="domain classifier", disable=not self.verbose):
                clf = self._make_classifier(rng.randint(2**31 - 1)).fit(X[train], d[train])
                p[test] = self._proba_target(clf, X[test])
                self.classifier_.append(clf)
        self.proba_target_ = p
        self.domain_auc_ = float(roc_auc_score(d, p))
        self.prior_ratio_ = n_s / n_t
        self.ratio_ = self._ratio(p[:n_s])
        flat = self.ratio_**self.power
        weights = normalize_mean_one(flat, self.max_weight)
        # The scale normalize_mean_one solved for, read off the smallest ratio (capped only if every row is), so that
        # predict_weights puts rows the fit never saw on the same scale as weights_.
        smallest = int(np.argmin(flat))
        self.scale_ = float(weights[smallest] / flat[smallest])
        return weights

    def _ratio(self, proba_target: np.ndarray) -> np.ndarray:
        ps = np.clip(proba_target, self.clip_proba, 1.0 - self.clip_proba)
        return ps / (1.0 - ps) * self.prior_ratio_

    def predict_weights(self, X) -> np.ndarray:
        """Weights of new rows, on the scale of ``weights_``: the fitted classifier's odds (averaged over the fold
        classifiers when ``cv`` is set) with the same clipping, ``power``, mean-1 scale and ``max_weight`` cap.

        For a row seen in ``fit`` (and ``cv`` None) this is its entry of ``weights_``; for rows drawn from the same
        source distribution the weights average about 1. This is what lets weights estimated on a sample be applied
        to rows streamed later (``streaming: true``).

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)
            Rows to weight (same features as in ``fit``).

        Returns
        -------
        np.ndarray, shape (n,)
        """
        if not hasattr(self, "scale_"):
            raise RuntimeError("DensityRatioClassifier is not fitted yet; call fit(Xs, Xt) first")
        X = check_features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: has {X.shape[1]} features, the model was fitted on {self.n_features_in_}")
        classifiers = self.classifier_ if isinstance(self.classifier_, list) else [self.classifier_]
        p = np.mean([self._proba_target(clf, X) for clf in classifiers], axis=0)
        w = self.scale_ * self._ratio(p) ** self.power
        return w if self.max_weight is None else np.minimum(w, self.max_weight)

    @staticmethod
    def _proba_target(clf, X: np.ndarray) -> np.ndarray:
        classes = list(clf.classes_)
        return clf.predict_proba(X)[:, classes.index(1)]
