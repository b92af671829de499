"""Kernel mean matching (Huang, Gretton, Borgwardt, Schoelkopf & Smola, NIPS 2006)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from ._base import BaseWeighting
from ._kernels import (
    GammaSpec,
    NystroemFeatures,
    RandomFourierFeatures,
    pooled_rows,
    rbf_kernel,
    rbf_kernel_row_means,
    resolve_gamma,
    row_blocks,
)

_SOLVERS = ("auto", "exact", "nystroem", "rff")


def project_box_sum(v: np.ndarray, upper: float, lo: float, hi: float) -> np.ndarray:
    """Euclidean projection of ``v`` onto ``{w : 0 <= w <= upper, lo <= sum(w) <= hi}``.

    By the KKT conditions the projection is ``clip(v - tau, 0, upper)`` for one scalar ``tau`` (0 when clipping
    alone already satisfies the sum constraint). ``sum(clip(v - tau, 0, upper))`` is continuous and non-increasing
    in ``tau``, so ``tau`` is bracketed by bisection and then solved exactly on the set of unclipped coordinates.

    Parameters
    ----------
    v : np.ndarray, shape (n,)
        Point to project.
    upper : float
        Box upper bound (``B`` in KMM); the lower bound is 0.
    lo, hi : float
        Bounds on the sum; need ``0 <= lo <= hi`` and ``lo <= n * upper``.

    Returns
    -------
    np.ndarray, shape (n,)
    """
    w = np.clip(v, 0.0, upper)
    s = w.sum()
    if lo <= s <= hi:
        return w
    target = hi if s > hi else lo
    t_lo, t_hi = float(v.min()) - upper, float(v.max())  # sum is n*upper at t_lo and 0 at t_hi
    for _ in range(64):
        mid = 0.5 * (t_lo + t_hi)
        if np.clip(v - mid, 0.0, upper).sum() > target:
            t_lo = mid
        else:
            t_hi = mid
        if t_hi - t_lo <= 1e-15 * max(1.0, abs(mid)):
            break
    tau = 0.5 * (t_lo + t_hi)
    shifted = v - tau
    free = (shifted > 0) & (shifted < upper)
    n_free = int(free.sum())
    if n_free:
        # Exact on the active set the bisection found; the sum is linear in tau there.
        tau = (v[free].sum() + upper * float((shifted >= upper).sum()) - target) / n_free
    return np.clip(v - tau, 0.0, upper)


def _top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], n: int, rng, n_iter: int = 50) -> float:
    """Largest eigenvalue of a PSD operator by power iteration (a kernel matrix's top eigenvalue is well
    separated, so a few dozen iterations are plenty)."""
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(n_iter):
        u = matvec(v)
        lam = float(np.linalg.norm(u))
        if lam == 0.0:
            return 0.0
        v = u / lam
    return lam


class KMM(BaseWeighting):
    r"""Kernel mean matching: source weights whose weighted kernel mean matches the target's.

    Solves the KMM quadratic programme of Huang et al. (2006) with an RBF kernel ``k``:

    .. math::
        \min_w \tfrac12 w^\top K w - \kappa^\top w \quad \text{s.t.}\quad 0 \le w_i \le B,\;
        \Big|\tfrac{1}{n_s}\textstyle\sum_i w_i - 1\Big| \le \epsilon,

    with ``K_ij = k(xs_i, xs_j)`` and ``kappa_i = (n_s / n_t) sum_j k(xs_i, xt_j)``; this is, up to a constant,
    ``n_s^2 / 2`` times the squared MMD between the weighted source and the target.

    Solver. Accelerated projected gradient (FISTA, Beck & Teboulle 2009, with O'Donoghue & Candes adaptive
    restart) on the feasible set ``{0 <= w <= B, |mean(w) - 1| <= eps}``, projected exactly by
    :func:`project_box_sum` (O(n) per step). The step is ``1 / L`` with ``L`` the top eigenvalue of ``K`` from
    power iteration. Each iteration costs one product with ``K``:

    - ``solver="exact"``: ``K`` is formed densely (float64, ``8 n_s^2`` bytes; ``kappa`` is computed in row blocks
      so the ``n_s x n_t`` cross kernel is never held). Exact to the tolerance; for up to a few thousand rows.
    - ``solver="nystroem"`` (default above ``max_exact`` rows) or ``"rff"``: ``k`` is replaced by a rank-``D``
      feature map ``z`` (Nystroem on ``n_components`` landmark rows drawn from source and target, or random
      Fourier features), so ``K w = Z_s (Z_s^T w)`` and ``kappa = n_s Z_s mean_t z(xt)``. Memory
      ``O((n_s + batch) D)``, time ``O(n_s D)`` per iteration, i.e. linear in the number of rows: 20,000 x 384
      features solve in seconds. This is the exact KMM programme for the approximate kernel, so the constraints
      hold exactly; only the kernel is approximated.

    What to expect. KMM guarantees that the weighted source matches the target's kernel mean (hence its low-order
    moments); it does not estimate a smooth ratio function. With a smooth kernel the programme is ill-conditioned:
    the objective settles within a few hundred iterations while individual weights keep drifting along flat
    directions, and the exact minimiser is spiky (a few large weights). ``max_iter``/``tol`` therefore act as a
    mild regulariser as well as a budget; ``converged_`` says whether ``tol`` was met. Smaller ``B`` also tames
    spikes. When a smooth ratio is needed (weights for new rows, calibrated values), prefer :class:`KLIEP` or
    :class:`DensityRatioClassifier`.

    Parameters
    ----------
    gamma : float or {"median", "scale", "auto"}, default "median"
        RBF width, ``k(x, y) = exp(-gamma ||x - y||^2)`` (scikit-learn's convention). See
        :func:`hf_transfer.instance._kernels.resolve_gamma`; "median" is the median heuristic on pooled rows.
    B : float, default 1000.0
        Upper bound on each weight (Huang et al. use 1000). Must be at least ``1 - eps``.
    eps : float or None, default None
        Allowed deviation of the mean weight from 1. None: ``(sqrt(n_s) - 1) / sqrt(n_s)``, the choice of the
        reference implementations (ADAPT, skada); the paper's rate is ``O(B / sqrt(n_s))``.
    solver : {"auto", "exact", "nystroem", "rff"}, default "auto"
        "auto" is "exact" up to ``max_exact`` source rows and "nystroem" above.
    n_components : int, default 1000
        Rank of the kernel approximation (landmarks or random features) for the approximate solvers.
    max_exact : int, default 4000
        Largest ``n_s`` that "auto" solves with the dense kernel (4000 rows = 128 MB).
    max_iter : int, default 1000
        Iteration cap of the projected-gradient solver.
    tol : float, default 1e-6
        Stop when the root-mean-square change of ``w`` in one iteration falls below ``tol``.
    batch_size : int, default 2048
        Rows per block when kernels and features are computed (bounds peak memory).
    random_state : int, RandomState or None
        Seeds the landmark / random-feature draw, the median-heuristic subsample and the power iteration.
    verbose : bool, default False
        Show a tqdm progress bar over solver iterations.

    Attributes
    ----------
    weights_ : np.ndarray, shape (n_s,)
        The KMM solution ``w``: ``0 <= w <= B`` and ``|mean(w) - 1| <= eps``.
    gamma_ : float
        The kernel width used.
    eps_ : float
        The mean tolerance used.
    solver_ : str
        The solver used ("exact", "nystroem" or "rff").
    objective_ : float
        ``0.5 w^T K w - kappa^T w`` at the solution (with the approximate kernel for the approximate solvers).
    n_iter_ : int
        Iterations run.
    converged_ : bool
        Whether ``tol`` was reached before ``max_iter``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> Xs, Xt = rng.normal(0, 1, (500, 2)), rng.normal(0.5, 1, (400, 2))
    >>> kmm = KMM(random_state=0).fit(Xs, Xt)
    >>> kmm.weights_.shape, bool(abs(kmm.weights_.mean() - 1) <= kmm.eps_)
    ((500,), True)
    """

    def __init__(
        self,
        *,
        gamma: GammaSpec = "median",
        B: float = 1000.0,
        eps: float | None = None,
        solver: str = "auto",
        n_components: int = 1000,
        max_exact: int = 4000,
        max_iter: int = 1000,
        tol: float = 1e-6,
        batch_size: int = 2048,
        random_state=None,
        verbose: bool = False,
    ):
        self.gamma = gamma
        self.B = B
        self.eps = eps
        self.solver = solver
        self.n_components = n_components
        self.max_exact = max_exact
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _fit(self, Xs: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver: unknown value {self.solver!r}; choose one of {', '.join(_SOLVERS)}")
        n_s = Xs.shape[0]
        rng = check_random_state(self.random_state)
        eps = (np.sqrt(n_s) - 1.0) / np.sqrt(n_s) if self.eps is None else float(self.eps)
        if eps < 0:
            raise ValueError(f"eps: must be non-negative, got {eps}")
        if not self.B > 0 or self.B < 1.0 - eps:
            raise ValueError(
                f"B: must be at least 1 - eps = {1.0 - eps:.3g} for the constraints to be feasible, got {self.B}"
            )
        lo, hi = max(0.0, n_s * (1.0 - eps)), n_s * (1.0 + eps)
        self.eps_ = eps
        self.gamma_ = resolve_gamma(self.gamma, Xs, Xt, random_state=rng)
        solver = self.solver
        if solver == "auto":
            solver = "exact" if n_s <= self.max_exact else "nystroem"
        self.solver_ = solver

        if solver == "exact":
            K = rbf_kernel(Xs, Xs, self.gamma_)
            kappa = n_s * rbf_kernel_row_means(Xs, Xt, self.gamma_, self.batch_size)

            def matvec(w: np.ndarray) -> np.ndarray:
                return K @ w

        else:
            fmap_cls = NystroemFeatures if solver == "nystroem" else RandomFourierFeatures
            fmap = fmap_cls(self.gamma_, self.n_components, random_state=rng)
            if solver == "nystroem":
                # Landmarks from both domains so that the map resolves the target's support too.
                fmap.fit(pooled_rows(Xs, Xt, self.n_components, rng))
            else:
                fmap.fit(Xs)  # only the input dimension is used
            Zs = fmap.transform(Xs, self.batch_size)
            zt_mean = np.zeros(Zs.shape[1], dtype=np.float64)
            for sl in row_blocks(Xt.shape[0], self.batch_size):
                zt_mean += fmap.transform(Xt[sl], self.batch_size).sum(0, dtype=np.float64)
            zt_mean /= Xt.shape[0]
            kappa = n_s * (Zs @ zt_mean.astype(Zs.dtype)).astype(np.float64)
            # k(x, x) = 1 for the RBF kernel: keep the diagonal exact (K ~ Z Z^T + diag(1 - |z_i|^2)). Without
            # it the low-rank K leaves n_s - D directions unpenalised and the solution drifts along them.
            diag = np.clip(1.0 - np.einsum("ij,ij->i", Zs, Zs, dtype=np.float64), 0.0, None)

            def matvec(w: np.ndarray) -> np.ndarray:
                return (Zs @ (Zs.T @ w.astype(Zs.dtype))).astype(np.float64) + diag * w

        w, n_iter, converged = self._fista(matvec, kappa, lo, hi, rng)
        self.n_iter_, self.converged_ = n_iter, converged
        self.objective_ = float(0.5 * w @ matvec(w) - kappa @ w)
        return w

    def _fista(self, matvec, kappa: np.ndarray, lo: float, hi: float, rng) -> tuple[np.ndarray, int, bool]:
        n = kappa.shape[0]
        L = _top_eigenvalue(matvec, n, rng) * 1.05 + 1e-12  # margin: power iteration approaches L from below
        step = 1.0 / L
        w = project_box_sum(np.ones(n), self.B, lo, hi)
        y, t = w.copy(), 1.0
        converged, it = False, 0
        bar = tqdm(total=self.max_iter, desc="KMM", disable=not self.verbose, leave=False)
        for it in range(1, self.max_iter + 1):
            grad = matvec(y) - kappa
            w_new = project_box_sum(y - step * grad, self.B, lo, hi)
            diff = w_new - w
            if np.dot(y - w_new, diff) > 0:
                # Momentum points uphill: restart it (keeps FISTA monotone-ish and fast on ill-conditioned K).
                t = 1.0
            t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            y = w_new + ((t - 1.0) / t_new) * diff
            w, t = w_new, t_new
            change = float(np.sqrt(np.dot(diff, diff) / n))
            bar.update(1)
            if self.verbose and it % 50 == 0:
                bar.set_postfix(change=f"{change:.2e}")
            if change < self.tol:
                converged = True
                break
        bar.close()
        return w, it, converged
