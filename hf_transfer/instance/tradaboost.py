"""TrAdaBoost: boosting for transfer with a few labelled target rows (Dai, Yang, Xue & Yu, ICML 2007)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import has_fit_parameter
from tqdm.auto import tqdm

from ._base import ArrayLike, check_features, check_labels, check_pair, check_weights

_VOTING = ("hard", "soft")


class TrAdaBoost(ClassifierMixin, BaseEstimator):
    r"""TrAdaBoost for a large labelled source set and a few labelled target rows.

    Each round trains ``estimator`` on source + target rows with the current weights, measures the weighted
    error ``eps_t`` on the *target* rows only, then

    - multiplies the weight of each misclassified **source** row by ``beta = 1 / (1 + sqrt(2 ln n_s / N))``
      (source rows that disagree with the target concept fade out, Hedge-style);
    - multiplies the weight of each misclassified **target** row by ``1 / beta_t`` with
      ``beta_t = eps_t / (1 - eps_t)`` (AdaBoost on the target).

    The prediction is the vote of the second half of the rounds, each weighted by ``ln(1 / beta_t)``: for two
    classes and ``voting="hard"`` this is exactly the paper's rule; for more classes it is the natural extension
    (argmax of the weighted votes; ``eps_t`` uses the 0/1 loss).

    The weights only move through training mistakes: with a learner that fits every training row (an unregularised
    linear model on more features than rows, deep trees) nothing is misclassified, every round is the same model
    and ``weights_`` stay at 1. Use a learner with limited capacity (regularised logistic regression, stumps or
    shallow trees), as in the paper.

    Parameters
    ----------
    estimator : scikit-learn classifier or None
        Base learner; its ``fit`` must accept ``sample_weight``. Cloned each round. None:
        ``LogisticRegression(max_iter=1000)``.
    n_estimators : int, default 20
        Boosting rounds ``N``.
    voting : {"hard", "soft"}, default "hard"
        "hard": weighted class votes of the learners (the paper). "soft": weighted mean of their
        ``predict_proba`` (needs learners with ``predict_proba``; smoother probabilities).
    dynamic_factor : bool, default False
        Multiply source weights by ``2 (1 - eps_t)`` each round (Al-Stouhi & Reddy, 2011), which stops the target
        weights from draining the source weights too early.
    verbose : bool, default False
        Progress bar over rounds.

    Attributes
    ----------
    estimators_ : list
        The fitted learners, one per round.
    errors_ : np.ndarray, shape (N,)
        Weighted target error ``eps_t`` of each round (after clipping to ``[1e-10, 0.499]``).
    betas_ : np.ndarray, shape (N,)
        ``beta_t`` of each round.
    classes_ : np.ndarray
        Class labels.
    sample_weight_ : np.ndarray, shape (n_s + n_t,)
        Final weights of the source rows then the target rows, scaled to mean 1 over all rows.
    weights_ : np.ndarray, shape (n_s,)
        The source part of ``sample_weight_``: the source weights boosting ends with, on the same scale as the
        target's, so ``mean(weights_) < 1`` shows how much mass moved off the source.
    """

    def __init__(
        self,
        estimator=None,
        *,
        n_estimators: int = 20,
        voting: str = "hard",
        dynamic_factor: bool = False,
        verbose: bool = False,
    ):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.voting = voting
        self.dynamic_factor = dynamic_factor
        self.verbose = verbose

    def fit(
        self,
        Xs: ArrayLike,
        ys: ArrayLike,
        Xt: ArrayLike,
        yt: ArrayLike,
        sample_weight: ArrayLike | None = None,
    ) -> TrAdaBoost:
        """Run the boosting rounds.

        Parameters
        ----------
        Xs : array-like or torch.Tensor, shape (n_s, d)
            Source features.
        ys : array-like, shape (n_s,)
            Source labels.
        Xt : array-like or torch.Tensor, shape (n_t, d)
            Labelled target features (typically few rows).
        yt : array-like, shape (n_t,)
            Target labels.
        sample_weight : array-like, shape (n_s + n_t,), optional
            Initial weights of the source rows then the target rows (default: all 1).

        Returns
        -------
        self
        """
        Xs, Xt = check_pair(Xs, Xt)
        ys = check_labels(ys, "ys", Xs.shape[0])
        yt = check_labels(yt, "yt", Xt.shape[0])
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators: must be at least 1, got {self.n_estimators}")
        if self.voting not in _VOTING:
            raise ValueError(f"voting: unknown value {self.voting!r}; choose one of {', '.join(_VOTING)}")
        base = LogisticRegression(max_iter=1000) if self.estimator is None else self.estimator
        if not has_fit_parameter(base, "sample_weight"):
            raise ValueError(f"estimator: {type(base).__name__}.fit does not accept sample_weight")
        if self.voting == "soft" and not hasattr(base, "predict_proba"):
            raise ValueError(f"voting='soft' needs an estimator with predict_proba; {type(base).__name__} has none")

        n_s, n_t = Xs.shape[0], Xt.shape[0]
        X = np.vstack([Xs, Xt])
        y = np.concatenate([ys, yt])
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        if sample_weight is None:
            w = np.ones(n_s + n_t)
        else:
            w = check_weights(sample_weight, "sample_weight")
            if w.shape[0] != n_s + n_t:
                raise ValueError(f"sample_weight: has {w.shape[0]} entries, need n_s + n_t = {n_s + n_t}")
            w = w.copy()
        beta_src = 1.0 / (1.0 + np.sqrt(2.0 * np.log(n_s) / self.n_estimators))
        self.estimators_, errors, betas = [], [], []
        for _ in tqdm(range(self.n_estimators), desc="TrAdaBoost", disable=not self.verbose, leave=False):
            # Mean-1 weights: learners whose regularisation is relative to the summed weights (logistic
            # regression's C) then see the same regularisation strength as in unweighted training.
            p = w * ((n_s + n_t) / w.sum())
            clf = clone(base).fit(X, y, sample_weight=p)
            miss = (clf.predict(X) != y).astype(np.float64)
            eps = float(np.dot(w[n_s:], miss[n_s:]) / w[n_s:].sum())
            # The analysis needs eps_t < 1/2; eps_t = 0 would make beta_t = 0 and the vote weight infinite.
            eps = min(max(eps, 1e-10), 0.499)
            beta_t = eps / (1.0 - eps)
            w[:n_s] *= beta_src ** miss[:n_s]
            w[n_s:] *= beta_t ** (-miss[n_s:])
            if self.dynamic_factor:
                w[:n_s] *= 2.0 * (1.0 - eps)
            w /= w.sum()  # keeps the numbers in range over many rounds; only ratios matter
            self.estimators_.append(clf)
            errors.append(eps)
            betas.append(beta_t)
        self.errors_ = np.asarray(errors)
        self.betas_ = np.asarray(betas)
        self.sample_weight_ = w * ((n_s + n_t) / w.sum())
        self.weights_ = self.sample_weight_[:n_s].copy()
        return self

    def _voters(self) -> tuple[list, np.ndarray]:
        start = int(np.ceil(self.n_estimators / 2)) - 1  # rounds ceil(N/2)..N, 1-indexed as in the paper
        return self.estimators_[start:], np.log(1.0 / self.betas_[start:])

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities from the weighted vote of the second half of the rounds.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)

        Returns
        -------
        np.ndarray, shape (n, n_classes)
            Columns in the order of ``classes_``; rows sum to 1.
        """
        if not hasattr(self, "estimators_"):
            raise RuntimeError("TrAdaBoost is not fitted yet; call fit(Xs, ys, Xt, yt) first")
        X = check_features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: has {X.shape[1]} features, the model was fitted on {self.n_features_in_}")
        voters, alphas = self._voters()
        out = np.zeros((X.shape[0], self.classes_.size))
        for clf, a in zip(voters, alphas):
            cols = np.searchsorted(self.classes_, clf.classes_)
            if self.voting == "soft":
                out[:, cols] += a * clf.predict_proba(X)
            else:
                pred = np.searchsorted(self.classes_, clf.predict(X))
                out[np.arange(X.shape[0]), pred] += a
        return out / out.sum(1, keepdims=True)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted labels, shape (n,): the class with the largest weighted vote."""
        proba = self.predict_proba(X)  # checks fitted-ness first
        return self.classes_[np.argmax(proba, axis=1)]
