"""Scale: instance-weighting estimators on 20,000 x 384 shifted source and target features (time, peak memory).

The data are a 10-component Gaussian mixture in 384 dimensions (identity covariance, centres drawn from
N(0, 0.15^2 I)), the size and width of MiniLM sentence embeddings. Source and target share the components and differ
in the mixing weights (uniform vs geometric 1 ... 0.1), so the true ratio p_t(x) / p_s(x) is known in closed form and
the table can report how well each estimate tracks it (Pearson correlation over the source rows).

Every (method, size) runs in a fresh subprocess that loads the data from .npy files, so that memory is that method's
alone: ``RSS growth`` is the child's ``ru_maxrss`` after the fit minus its value before it (interpreter, libraries and
data), ``peak`` the absolute ``ru_maxrss``; ``tracemalloc peak`` is the largest amount of memory Python-tracked
allocations (NumPy arrays included) held during the fit. BLAS runs on one thread.

skada's KMM forms two dense n x n float64 kernels (2 x 3.2 GB at n = 20,000) and runs 1000 Frank-Wolfe steps over
them, so it is compared at n = 5,000 instead, next to our exact and Nystroem solvers at the same size, where the
exact KMM objective can also be evaluated: ``KMM gap`` is ``(f(w) - f*) / (f(1) - f*)`` with the exact kernel, 0 for
the exact minimiser and 1 for uniform weights.

Usage::

    python benchmarks/instance_scale.py                 # ~3-4 minutes on one core
    python benchmarks/instance_scale.py --n 20000 --d 384 --out benchmarks/results/instance_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run from a checkout without installing

from _machine import machine_header, markdown_table  # noqa: E402


def make_data(n: int, d: int, seed: int = 0, spread: float = 0.15, k: int = 10):
    """Source and target (n, d) float32 and the true ratio p_t / p_s at the source rows."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, spread, (k, d))
    p_s = np.full(k, 1.0 / k)
    p_t = np.geomspace(1.0, 0.1, k)
    p_t /= p_t.sum()
    Xs = (mu[rng.choice(k, n, p=p_s)] + rng.normal(size=(n, d))).astype(np.float32)
    Xt = (mu[rng.choice(k, n, p=p_t)] + rng.normal(size=(n, d))).astype(np.float32)
    log_phi = np.stack([-0.5 * ((Xs.astype(np.float64) - mu[j]) ** 2).sum(1) for j in range(k)], axis=1)
    ratio = np.exp(logsumexp(log_phi + np.log(p_t), axis=1) - logsumexp(log_phi + np.log(p_s), axis=1))
    return Xs, Xt, ratio


def _make_estimator(method: str):
    from hf_transfer.instance import KLIEP, KMM, DensityRatioClassifier, NearestNeighborSelection

    return {
        "kmm_auto": lambda: KMM(random_state=0),
        "kmm_nystroem500": lambda: KMM(solver="nystroem", n_components=500, random_state=0),
        "kmm_exact": lambda: KMM(solver="exact", random_state=0),
        "density_ratio": lambda: DensityRatioClassifier(random_state=0),
        "kliep": lambda: KLIEP(random_state=0),
        "nearest_neighbors": lambda: NearestNeighborSelection(n_neighbors=10),
    }[method]()


def _skada_kmm(Xs, Xt, gamma):
    import warnings

    import skada

    X = np.vstack([Xs, Xt]).astype(np.float64)
    sd = np.r_[np.ones(len(Xs)), -np.ones(len(Xt))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skada.KMMReweightAdapter(gamma=gamma).fit(X, sample_domain=sd).source_weights_


def child(method: str, data_dir: Path, f_star: float | None = None) -> dict:
    """Run one method in this (fresh) process and return its measurements.

    ``method="kmm_reference"`` only solves the exact KMM programme to a tight tolerance and returns its objective
    ``f*`` (passed back in as ``f_star`` for the gap column).
    """
    from threadpoolctl import threadpool_limits

    from hf_transfer.instance import effective_sample_size
    from hf_transfer.instance._kernels import median_sq_distance, rbf_kernel, rbf_kernel_row_means

    # The parent wrote the data: loading it costs no more memory than the arrays, so the peak RSS measured before
    # the fit is a clean baseline (generating them here would leave a higher peak behind).
    Xs, Xt, ratio = (np.load(data_dir / f"{k}.npy") for k in ("Xs", "Xt", "ratio"))
    n, d = Xs.shape
    gamma = 1.0 / median_sq_distance(np.vstack([Xs, Xt]).astype(np.float64), random_state=0)
    if method == "kmm_reference":
        from hf_transfer.instance import KMM

        with threadpool_limits(limits=1):
            ref = KMM(gamma=gamma, solver="exact", max_iter=5000, tol=1e-8).fit(Xs, Xt)
        return {"method": method, "f_star": ref.objective_, "n_iter_": ref.n_iter_, "converged_": ref.converged_}
    with threadpool_limits(limits=1):
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        start = time.perf_counter()
        if method == "skada_kmm":
            w = _skada_kmm(Xs, Xt, gamma)
            info = {}
        else:
            est = _make_estimator(method)
            if hasattr(est, "gamma") and method.startswith("kmm"):
                est.set_params(gamma=gamma)  # the same width as skada's run
            w = est.fit_weights(Xs, Xt)
            info = {k: getattr(est, k) for k in ("solver_", "n_iter_", "converged_", "gamma_") if hasattr(est, k)}
        seconds = time.perf_counter() - start
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {
            "method": method,
            "n": n,
            "d": d,
            "seconds": seconds,
            "rss_mb": (rss_after - rss_before) / 1024.0,  # ru_maxrss is in KiB on Linux
            "rss_total_mb": rss_after / 1024.0,
            "traced_mb": traced_peak / 2**20,
            "corr": float(np.corrcoef(w, ratio)[0, 1]),
            "ess": effective_sample_size(w) / len(w),
            "mean_w": float(np.mean(w)),
            **{k: (v.item() if hasattr(v, "item") else v) for k, v in info.items()},
        }
        if f_star is not None and method.startswith(("kmm", "skada_kmm")):
            # exact-kernel KMM objective of these weights against the reference minimiser (outside the timing)
            Xs64, Xt64 = Xs.astype(np.float64), Xt.astype(np.float64)
            K = rbf_kernel(Xs64, Xs64, gamma)
            kappa = n * rbf_kernel_row_means(Xs64, Xt64, gamma)
            w = np.asarray(w, dtype=np.float64)
            f_w, f_1 = 0.5 * w @ K @ w - kappa @ w, 0.5 * K.sum() - kappa.sum()
            out["kmm_gap"] = float((f_w - f_star) / (f_1 - f_star))
    return out


def run_child(method: str, data_dir: Path, timeout: int, f_star: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--data", str(data_dir)]
    if f_star is not None:
        cmd += ["--f-star", repr(f_star)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {data_dir} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


LABELS = {
    "kmm_auto": "KMM, auto (Nystroem 1000 above 4000 rows) [ours]",
    "kmm_nystroem500": "KMM, Nystroem 500 [ours]",
    "kmm_exact": "KMM, exact dense kernel [ours]",
    "density_ratio": "DensityRatioClassifier (LR) [ours]",
    "kliep": "KLIEP (5-fold CV over 5 widths) [ours]",
    "nearest_neighbors": "NearestNeighborSelection (count, k=10) [ours]",
    "skada_kmm": "KMMReweightAdapter (Frank-Wolfe, dense) [skada]",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="rows per domain for the large run")
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--n-small", type=int, default=5000, help="rows per domain for the comparison with skada")
    parser.add_argument("--timeout", type=int, default=600, help="per-method limit in seconds")
    parser.add_argument("--no-skada", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "instance_scale.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--f-star", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.f_star)))
        return

    start = time.perf_counter()
    large = ["kmm_auto", "kmm_nystroem500", "density_ratio", "kliep", "nearest_neighbors"]
    small = ["kmm_exact", "kmm_auto", "kmm_nystroem500", "density_ratio"] + ([] if args.no_skada else ["skada_kmm"])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for n in (args.n, args.n_small):
            dirs[n] = Path(tmp) / str(n)
            dirs[n].mkdir()
            for key, arr in zip(("Xs", "Xt", "ratio"), make_data(n, args.d)):
                np.save(dirs[n] / f"{key}.npy", arr)
        reference = run_child("kmm_reference", dirs[args.n_small], args.timeout)
        print(json.dumps(reference), flush=True)
        for n, methods in ((args.n, large), (args.n_small, small)):
            for m in methods:
                res = run_child(m, dirs[n], args.timeout, reference["f_star"] if n == args.n_small else None)
                print(json.dumps(res), flush=True)
                runs.append(res)
    elapsed = time.perf_counter() - start

    def row(r: dict) -> list[str]:
        gap = f"{r['kmm_gap']:.3f}" if "kmm_gap" in r else "-"
        iters = f"{r['n_iter_']}{'' if r.get('converged_', True) else ' (cap)'}" if "n_iter_" in r else "-"
        return [
            LABELS[r["method"]],
            f"{r['n']:,} x {r['d']}",
            f"{r['seconds']:.2f}",
            f"{r['rss_mb']:.0f} / {r['rss_total_mb']:.0f}",
            f"{r['traced_mb']:.0f}",
            f"{r['corr']:.3f}",
            f"{r['ess']:.2f}",
            iters,
            gap,
        ]

    header = ["method", "source x target rows, dims", "fit (s)", "RSS growth / peak (MB)", "tracemalloc peak (MB)",
              "corr with true ratio", "ESS/n", "iterations", "KMM gap"]  # fmt: skip
    table = markdown_table(header, [row(r) for r in runs])
    text = "\n".join(
        [
            "## Instance weighting at scale: shifted Gaussian-mixture features",
            "",
            machine_header(
                {
                    "data": f"{args.n:,} source + {args.n:,} target rows x {args.d} (and {args.n_small:,} + "
                    f"{args.n_small:,} for the skada comparison); 10-component mixture, shift in the mixing weights",
                    "timing": "one fit per method in a fresh subprocess, BLAS limited to 1 thread",
                    "total benchmark wall time": f"{elapsed:.0f} s",
                }
            ),
            "",
            table,
            "",
            "Columns: RSS growth / peak: growth of the process's maximum resident set during the fit / its absolute "
            "value (interpreter, libraries and data included); tracemalloc peak "
            "is the largest Python/NumPy allocation total during the fit. corr: Pearson correlation of the weights "
            "with the closed-form p_t/p_s over the source rows. KMM gap: exact-kernel KMM objective of the weights, "
            f"0 = reference minimiser (exact solver, tol 1e-8, {reference['n_iter_']} iterations, converged: "
            f"{reference['converged_']}), 1 = uniform weights (small n only). iterations: solver iterations, "
            "'(cap)' when max_iter was reached before tol.",
            "",
        ]
    )
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
