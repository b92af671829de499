"""KLIEP: Kullback-Leibler importance estimation (Sugiyama et al., NIPS 2007 / AISM 2008)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from ._base import BaseWeighting, check_features
from ._kernels import GammaSpec, _sq_dists, rbf_kernel, resolve_gamma

#: Multipliers of the median-heuristic width tried by likelihood cross-validation when ``gamma="median_grid"``.
MEDIAN_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


def _kliep_ascent(A: np.ndarray, b: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, float, int]:
    r"""Solve ``max_alpha mean_t log(A alpha)`` s.t. ``b^T alpha = 1, alpha >= 0``.

    With ``beta = b * alpha`` the feasible set is the probability simplex and the objective
    ``f(beta) = mean_t log((A~ beta)_t)``, ``A~ = A / b``, is the log-likelihood of a mixture with fixed components
    and mixing weights ``beta``. It is maximised by mirror ascent on the simplex (exponentiated gradient,
    ``beta <- beta * exp(eta * g)``, renormalised, with ``g = A~^T (1 / A~ beta) / n_t`` the gradient). With
    ``eta = 1`` this is, to first order, the classic EM update ``beta <- beta * g``; here ``eta`` adapts (doubled
    after an accepted step, quartered after a rejected one) and a step is only accepted if it increases ``f``,
    so the ascent is monotone. The adaptive step matters: with wide kernels ``f`` is nearly linear, the optimum is
    a vertex, and plain EM needs thousands of iterations to get there (the original paper's projected gradient
    ascent needs a hand-tuned step instead).

    Stopping rule: ``beta . g = 1``, so ``max_l g_l - 1`` is the Frank-Wolfe duality gap, an upper bound on
    ``f(optimum) - f(beta)``. Iterations stop once it is below ``tol``: the returned objective is then certified to
    be within ``tol`` of the maximum.

    Returns ``alpha`` (m,), the final objective, and the number of objective/gradient evaluations.
    """
    At = A / b[None, :]
    n, m = At.shape
    tiny = np.finfo(np.float64).tiny
    beta = np.full(m, 1.0 / m)
    r = At @ beta
    obj = float(np.mean(np.log(r + tiny)))
    eta, evals = 1.0, 0
    while evals < max_iter:
        g = At.T @ (1.0 / (r + tiny)) / n
        evals += 1
        if g.max() - 1.0 <= tol:
            break
        while True:
            cand = beta * np.exp(eta * (g - g.max()))  # shifting g by a constant cancels in the normalisation
            cand /= cand.sum()
            cand_r = At @ cand
            cand_obj = float(np.mean(np.log(cand_r + tiny)))
            evals += 1
            if cand_obj >= obj:
                beta, r, obj = cand, cand_r, cand_obj
                eta = min(eta * 2.0, 1e8)
                break
            eta /= 4.0
            if eta < 1e-10:  # no ascent direction left at float precision: at the optimum
                return beta / b, obj, evals
    return beta / b, obj, evals


class KLIEP(BaseWeighting):
    r"""KLIEP: the importance ``w(x) = p_t(x) / p_s(x)`` as a kernel model fitted by maximum target likelihood.

    ``w(x) = sum_l alpha_l k(x, c_l)`` with RBF kernels on ``n_centers`` target rows ``c_l``; ``alpha`` maximises
    ``mean_t log w(xt)`` subject to ``mean_s w(xs) = 1`` and ``alpha >= 0`` (minimising KL(p_t || w p_s)). The
    concave programme is solved by monotone mirror ascent with an adaptive step and a duality-gap stopping rule,
    described in :func:`_kliep_ascent`.

    The kernel width is chosen by likelihood cross-validation (Sugiyama et al. 2008, section 5): the target rows are
    split in ``cv`` folds; for each candidate width, KLIEP is fitted on ``cv - 1`` folds (centres drawn from
    them) and scored by ``mean log w(x)`` on the held-out target fold. The best width is refitted on all rows.

    Parameters
    ----------
    gamma : float, str or sequence, default "median_grid"
        RBF width(s), ``k(x, y) = exp(-gamma ||x - y||^2)``. A single float or heuristic ("median", "scale",
        "auto") is used as is; a sequence is cross-validated. "median_grid" cross-validates the median-heuristic
        width times :data:`MEDIAN_GRID` ``= (0.1, 0.3, 1, 3, 10)``.
    n_centers : int, default 100
        Number of target rows used as kernel centres (drawn without replacement).
    cv : int, default 5
        Folds of the likelihood cross-validation (only used when several widths are given).
    max_iter : int, default 1000
        Cap on objective/gradient evaluations per fit.
    tol : float, default 1e-5
        Stop when the duality gap (a bound on the distance of ``mean_t log w(xt)`` to its maximum) is below
        ``tol``.
    random_state : int, RandomState or None
        Seeds the centre draws, the fold split and the median-heuristic subsample.
    verbose : bool, default False
        Show a tqdm progress bar over the cross-validation fits.

    Attributes
    ----------
    weights_ : np.ndarray, shape (n_s,)
        ``w(xs)`` for every source row; ``mean(weights_) == 1`` by construction.
    gamma_ : float
        The selected kernel width.
    cv_scores_ : dict[float, float]
        Held-out mean log-likelihood per candidate width (empty when one width was given).
    alpha_ : np.ndarray, shape (n_centers,)
        Kernel coefficients.
    centers_ : np.ndarray, shape (n_centers, d)
        Kernel centres (target rows).
    objective_ : float
        ``mean_t log w(xt)`` on all target rows at the solution.
    """

    def __init__(
        self,
        *,
        gamma: GammaSpec | Sequence[float | str] = "median_grid",
        n_centers: int = 100,
        cv: int = 5,
        max_iter: int = 1000,
        tol: float = 1e-5,
        random_state=None,
        verbose: bool = False,
    ):
        self.gamma = gamma
        self.n_centers = n_centers
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose

    def _candidates(self, Xs: np.ndarray, Xt: np.ndarray, rng) -> list[float]:
        if isinstance(self.gamma, str) and self.gamma == "median_grid":
            base = resolve_gamma("median", Xs, Xt, random_state=rng)
            return [base * f for f in MEDIAN_GRID]
        if isinstance(self.gamma, (str, int, float)) or self.gamma is None:
            return [resolve_gamma(self.gamma, Xs, Xt, random_state=rng)]
        cands = [resolve_gamma(g, Xs, Xt, random_state=rng) for g in self.gamma]
        if not cands:
            raise ValueError("gamma: the sequence of candidate widths is empty")
        return cands

    def _solve(self, gamma: float, D_t: np.ndarray, D_s: np.ndarray) -> tuple[np.ndarray, float]:
        """KLIEP coefficients from squared distances target->centres (n_t, m) and source->centres (n_s, m)."""
        A = np.exp(-gamma * D_t)
        b = np.exp(-gamma * D_s).mean(0)
        # A centre far from every source row has b_l ~ 0 and would get an unbounded coefficient; floor b.
        b = np.maximum(b, np.finfo(np.float64).tiny * 1e10)
        alpha, obj, _ = _kliep_ascent(A, b, self.max_iter, self.tol)
        return alpha, obj

    def _fit(self, Xs: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        if self.n_centers < 1:
            raise ValueError(f"n_centers: must be at least 1, got {self.n_centers}")
        rng = check_random_state(self.random_state)
        cands = self._candidates(Xs, Xt, rng)
        self.cv_scores_: dict[float, float] = {}
        if len(cands) > 1:
            if not 2 <= self.cv <= Xt.shape[0]:
                raise ValueError(f"cv: need 2 <= cv <= n_target_rows ({Xt.shape[0]}), got {self.cv}")
            folds = KFold(self.cv, shuffle=True, random_state=rng.randint(2**31 - 1)).split(Xt)
            scores: dict[float, list[float]] = {g: [] for g in cands}
            bar = tqdm(total=len(cands) * self.cv, desc="KLIEP CV", disable=not self.verbose, leave=False)
            for train, test in folds:
                # Distances do not depend on the width: compute them once per fold, and compare every width on
                # the same centres so that the comparison is not blurred by different centre draws.
                centers = Xt[train][rng.choice(len(train), min(self.n_centers, len(train)), replace=False)]
                D_train, D_test = _sq_dists(Xt[train], centers), _sq_dists(Xt[test], centers)
                D_s = _sq_dists(Xs, centers)
                for g in cands:
                    alpha, _ = self._solve(g, D_train, D_s)
                    w_test = np.exp(-g * D_test) @ alpha
                    scores[g].append(float(np.mean(np.log(w_test + np.finfo(np.float64).tiny))))
                    bar.update(1)
            bar.close()
            self.cv_scores_ = {g: float(np.mean(v)) for g, v in scores.items()}
            self.gamma_ = max(self.cv_scores_, key=self.cv_scores_.get)
        else:
            self.gamma_ = cands[0]
        self.centers_ = Xt[rng.choice(Xt.shape[0], min(self.n_centers, Xt.shape[0]), replace=False)]
        D_s = _sq_dists(Xs, self.centers_)
        self.alpha_, self.objective_ = self._solve(self.gamma_, _sq_dists(Xt, self.centers_), D_s)
        return np.exp(-self.gamma_ * D_s) @ self.alpha_

    def predict_weights(self, X) -> np.ndarray:
        """Evaluate the fitted importance ``w(x)`` on new rows.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)
            Rows to weight (same features as in ``fit``).

        Returns
        -------
        np.ndarray, shape (n,)
            Non-negative importance estimates (not re-normalised).
        """
        if not hasattr(self, "alpha_"):
            raise RuntimeError("KLIEP is not fitted yet; call fit(Xs, Xt) first")
        X = check_features(X, "X")
        if X.shape[1] != self.centers_.shape[1]:
            raise ValueError(f"X: has {X.shape[1]} features, the model was fitted on {self.centers_.shape[1]}")
        return np.maximum(rbf_kernel(X, self.centers_, self.gamma_) @ self.alpha_, 0.0)
