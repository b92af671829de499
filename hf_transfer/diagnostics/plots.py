"""Pictures: t-SNE of source vs target features (before and after adaptation), the learning curve, the ranking bar
chart and the domain-similarity heatmap. Each function writes one PNG (matplotlib's Agg backend, no display
needed) and returns its path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from ..errors import UserError

        raise UserError("plots need matplotlib: pip install matplotlib (or hf-transfer-learning[plots])") from None

    matplotlib.use("Agg", force=False)  # no display on servers; leaves an interactive backend the user chose
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)  # readers never see half a PNG
    _pyplot().close(fig)
    return path


def embed_2d(features: np.ndarray, *, seed: int = 0, max_iter: int = 1000) -> np.ndarray:
    """2-D t-SNE of ``features`` (PCA to 50 dimensions first when wider, as van der Maaten recommends; perplexity
    capped so small samples work). Falls back to PCA below 5 rows, where t-SNE is undefined."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    if len(x) < 5:
        return PCA(n_components=2).fit_transform(np.pad(x, ((0, 0), (0, max(0, 2 - x.shape[1])))))
    if x.shape[1] > 50:
        x = PCA(n_components=min(50, len(x) - 1), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    # One OpenMP thread: as fast for a few hundred points, and ~10x faster than spinning threads on a busy machine.
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=max_iter,
                    random_state=seed).fit_transform(x)


def tsne_plot(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    names: tuple[str, str] = ("source", "target"),
    seed: int = 0,
    max_iter: int = 1000,
) -> Path:
    """One t-SNE panel per entry of ``panels`` (``{"before": (source_features, target_features), "after": ...}``),
    source and target in two colours."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, (xs, xt)) in zip(axes[0], panels.items()):
        z = embed_2d(np.vstack([xs, xt]), seed=seed, max_iter=max_iter)
        ax.scatter(*z[: len(xs)].T, s=8, alpha=0.6, label=f"{names[0]} ({len(xs)})", c="tab:blue")
        ax.scatter(*z[len(xs):].T, s=8, alpha=0.6, label=f"{names[1]} ({len(xt)})", c="tab:orange")
        ax.set_title(f"t-SNE, {title}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def learning_curve_plot(curve, law, path: str | Path, *, target_accuracy: float | None = None) -> Path:
    """Measured accuracy (with +-1 std) against labelled rows on a log axis, the fitted power law extended to 10x
    the largest size, and its ceiling."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = np.asarray(curve.sizes, dtype=float)
    ax.errorbar(sizes, curve.accuracy, yerr=curve.std, fmt="o", capsize=3, label="measured")
    if law is not None:
        grid = np.geomspace(sizes.min(), sizes.max() * 10, 200)
        ax.plot(grid, law(grid), "-", label=f"fit {law.a:.3f} - {law.b:.3g} n^-{law.c:.2f}")
        ax.axhline(law.a, ls=":", c="grey", label=f"ceiling {law.a:.3f}")
    if target_accuracy is not None:
        ax.axhline(target_accuracy, ls="--", c="tab:red", label=f"wanted {target_accuracy:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("labelled target rows")
    ax.set_ylabel("target accuracy")
    ax.set_title("learning curve (logistic regression on frozen features)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def ranking_plot(panels: Mapping[str, Mapping[str, float]], path: str | Path, *, title: str = "transferability",
                 lower_is_better: Sequence[str] = ()) -> Path:
    """One horizontal bar chart per score (``{score: {candidate: value}}``), best candidate on top, raw values
    written beside the bars. Scores in ``lower_is_better`` (distances) are sorted ascending instead."""
    plt = _pyplot()
    panels = {k: {c: float(v) for c, v in p.items() if v is not None and np.isfinite(v)} for k, p in panels.items()}
    panels = {k: p for k, p in panels.items() if p}
    width = max((len(p) for p in panels.values()), default=1)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)), 0.45 * width + 1.6),
                             squeeze=False)
    for ax, (score, values) in zip(axes[0], panels.items()):
        low = score in lower_is_better
        order = sorted(values, key=lambda c: values[c], reverse=not low)[::-1]  # barh draws bottom-up
        v = np.array([values[c] for c in order])
        span = (v.max() - v.min()) or max(abs(v.max()), 1e-12)
        base = v.min() - 0.15 * span  # bars start below the worst value, so differences are visible
        colours = ["tab:green" if i == len(order) - 1 else "tab:grey" for i in range(len(order))]
        ax.barh(range(len(order)), v - base, left=base, color=colours)
        for i, x in enumerate(v):
            ax.text(x, i, f" {x:.3g}", va="center", fontsize=7)
        ax.set_yticks(range(len(order)), order, fontsize=8)
        ax.set_xlim(base, v.max() + 0.35 * span)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{score} ({'lower' if low else 'higher'} is better)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def heatmap_plot(matrix: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str = "domain distance",
                 value_name: str = "proxy A-distance") -> Path:
    """A square matrix of pairwise domain distances, annotated."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 1.8))
    im = ax.imshow(m, cmap="viridis_r")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="white" if m[i, j] > np.nanmean(m)
                    else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label=value_name)
    ax.set_title(title)
    return _save(fig, path)
