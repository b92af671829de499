"""``diagnose()``: measure a source -> target transfer problem with one or more models and write ``diagnostics.json``,
the PNGs and one self-contained ``report.html`` (the images are embedded, so the file can be mailed or attached).

What it measures, on a bounded seeded sample of each domain (``max_samples`` rows):

* per model and source: MMD^2 with its permutation p-value, proxy A-distance, CORAL distance to the target;
* with target labels: LogME and H-score of each model on the target; LEEP and NCE of each (model, source) pair,
  the source classifier being a logistic regression on that model's source features;
* the domain-similarity heatmap (proxy A-distance between every pair of domains) with the first model;
* with target labels: a learning curve on the target (logistic regression on frozen features) and its power law;
* the source classifier's target errors and their nearest source rows, the most target-like source rows (density
  ratio weights) and, when a trained classifier is given, gradient x input token attributions on its errors and
  the t-SNE of its features next to the pretrained ones (before / after);
* the advisor's recommendation (:func:`hf_transfer.diagnostics.advisor.advise`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .advisor import Measurements, Thresholds, advise
from .curves import fit_power_law, learning_curve
from .distance import coral_distance, mmd_test, proxy_a_distance
from .features import DomainSample, extract_features, load_domain, load_encoder
from .interpret import nearest_source_neighbours, token_attributions, top_weighted_sources
from .transferability import rank_candidates, source_classifier_outputs, transferability_scores

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PNG_NAMES = {"tsne": "tsne.png", "curve": "learning_curve.png", "ranking": "ranking.png", "heatmap": "heatmap.png"}


@dataclass
class DiagnosticsReport:
    """What :func:`diagnose` returns: ``results`` (the content of ``diagnostics.json``), the advice, and the paths
    written (``None`` when no ``output_dir`` was given)."""

    results: dict[str, Any]
    advice: Any
    images: dict[str, Path] = field(default_factory=dict)
    html_path: Path | None = None
    json_path: Path | None = None


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def diagnose(
    source: str | Sequence[str],
    target: str,
    *,
    models: Sequence[str] = (DEFAULT_MODEL,),
    output_dir: str | os.PathLike | None = None,
    trained_model: str | os.PathLike | None = None,
    max_samples: int = 300,
    text_column: str = "text",
    label_column: str = "label",
    use_target_labels: bool = True,
    target_labeled_rows: int | None = None,
    num_permutations: int = 200,
    target_accuracy: float | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    thresholds: Thresholds | None = None,
    seed: int = 0,
    streaming: bool = False,
) -> DiagnosticsReport:
    """Measure how ``source`` (one or several datasets) transfers to ``target``; see the module docstring.

    Args:
        source, target: files, folders or Hub dataset ids (the formats of ``source_data``).
        models: candidate backbones (Hub ids or folders), ranked by LogME when the target has labels.
        output_dir: where to write ``report.html``, ``diagnostics.json`` and the PNGs (``None``: write nothing).
        trained_model: a folder written by ``hf-transfer train``; adds before/after t-SNE and token attributions.
        max_samples: rows sampled per domain (seeded); everything here is at least quadratic in it.
        use_target_labels: ``False`` treats the target as unlabelled even when it has labels (what the advisor
            would say without them).
        target_labeled_rows: how many labelled target rows you could train on, for the advisor (default: every
            target row when the target has labels, else 0). The scores use the labels of the sample either way.
        target_accuracy: a wanted accuracy; the learning curve's power law says how many labels it would take.
        streaming: read every dataset as a stream and sample it through a bounded shuffle buffer (see
            :func:`~hf_transfer.diagnostics.features.load_domain`), never materialising it: for datasets too large
            to load. The dataset sizes the advisor and the power law use are then the rows read, lower bounds.
    """
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise UserError("source: give at least one source dataset")
    models = list(models) or [DEFAULT_MODEL]
    common = dict(text_column=text_column, label_column=label_column, max_samples=max_samples, seed=seed,
                  streaming=streaming)
    src = [load_domain(s, field="source", **common) for s in sources]
    names = [s.name for s in src]
    if len(set(names)) < len(names):  # two files with one stem: fall back to the specs
        for s in src:
            s.name = s.spec
    tgt = load_domain(target, field="target", **common)
    target_labels = tgt.labels if use_target_labels else None
    if target_labels is not None and len(np.unique(target_labels)) < 2:
        target_labels = None  # scores need two classes

    results: dict[str, Any] = {
        "source": [s.spec for s in src], "target": tgt.spec, "models": models, "max_samples": max_samples,
        "n_source": {s.name: len(s) for s in src}, "n_target": len(tgt),
        "target_labels_used": target_labels is not None, "seed": seed, "streaming": streaming,
    }
    feats: dict[str, dict[str, np.ndarray]] = {}
    distances: dict[str, dict[str, dict[str, float]]] = {}
    scores: dict[str, dict[str, float]] = {}  # model -> LogME, H-score on the target
    source_scores: dict[str, dict[str, float]] = {}  # source (per model) -> LEEP, NCE
    for model_name in models:
        model, tokenizer = load_encoder(model_name)
        embed = dict(batch_size=batch_size, max_length=max_length)
        feats[model_name] = {s.name: extract_features(model, tokenizer, s.texts, desc=f"Embedding {s.name}", **embed)
                             for s in src}
        feats[model_name]["__target__"] = extract_features(model, tokenizer, tgt.texts, desc="Embedding target",
                                                           **embed)
        xt = feats[model_name]["__target__"]
        distances[model_name] = {}
        for s in src:
            xs = feats[model_name][s.name]
            mmd = mmd_test(xs, xt, num_permutations=num_permutations, seed=seed)
            pad = proxy_a_distance(xs, xt, seed=seed)
            distances[model_name][s.name] = {
                "mmd2": mmd.mmd2, "mmd_p_value": mmd.p_value, "mmd_gamma": mmd.gamma, "pad": pad.pad,
                "domain_auc": pad.auc, "coral": coral_distance(xs, xt),
            }
            if target_labels is not None and s.labels is not None:
                probs = source_classifier_outputs(xs, s.labels, xt, seed=seed)
                pair = transferability_scores(xt, target_labels, source_probs=probs, scores=("leep", "nce"))
                source_scores[f"{s.name} ({_short(model_name)})" if len(models) > 1 else s.name] = pair
        if target_labels is not None:
            scores[model_name] = transferability_scores(xt, target_labels, scores=("logme", "hscore"))
        del model
    results["distances"] = distances
    results["transferability"] = {"models": scores, "sources": source_scores}
    model_scores = {m: v["logme"] for m, v in scores.items()}
    best_model = max(model_scores, key=model_scores.get) if model_scores else models[0]
    results["best_model"] = best_model
    results["rankings"] = {
        "models_by_logme": rank_candidates(scores, "logme"),
        "sources_by_leep": rank_candidates(source_scores, "leep"),
        "sources_by_pad": sorted(((s, d["pad"]) for s, d in distances[best_model].items()), key=lambda t: t[1]),
    }

    # Domain-similarity heatmap: proxy A-distance between every pair of domains, first model.
    f0 = feats[models[0]]
    domains = [s.name for s in src] + [f"{tgt.name} (target)"]
    keys = [s.name for s in src] + ["__target__"]
    matrix = np.zeros((len(keys), len(keys)))
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            matrix[i, j] = matrix[j, i] = proxy_a_distance(f0[keys[i]], f0[keys[j]], seed=seed).pad
    results["heatmap"] = {"domains": domains, "pad": matrix, "model": models[0]}

    # The source the advice and the interpretability are about: the best by LEEP (with the best model), else the
    # closest by proxy A-distance.
    by_leep = [k for k, _ in rank_candidates(source_scores, "leep")]
    by_leep = [s for k in by_leep for s in src if k in (s.name, f"{s.name} ({_short(best_model)})")]
    best_src = by_leep[0] if by_leep else next(s for s in src if s.name == results["rankings"]["sources_by_pad"][0][0])
    results["best_source"] = best_src.name
    xs_best, xt_best = feats[best_model][best_src.name], feats[best_model]["__target__"]
    law = curve = None
    if target_labels is not None and len(tgt) >= 40:
        half = np.random.default_rng(seed).permutation(len(tgt))
        train_idx, eval_idx = half[: len(tgt) // 2], half[len(tgt) // 2:]
        curve = learning_curve(xt_best[train_idx], target_labels[train_idx], xt_best[eval_idx],
                               target_labels[eval_idx], seed=seed)
        results["learning_curve"] = curve.to_dict()
        try:
            law = fit_power_law(curve.sizes, curve.accuracy, weights=curve.std)
            results["power_law"] = law.to_dict()
            full = tgt.n_total
            results["power_law"]["accuracy_at_all_target_rows"] = float(law(full))
            results["power_law"]["accuracy_at_10x_target_rows"] = float(law(10 * full))
            if target_accuracy is not None:
                results["power_law"]["wanted_accuracy"] = target_accuracy
                results["power_law"]["labels_needed"] = law.labels_needed(target_accuracy)
        except (RuntimeError, ValueError) as err:  # curve_fit gives up on flat or noisy curves
            results["power_law"] = {"error": str(err).splitlines()[0]}

    trained = None
    if trained_model is not None:
        from ..tasks import load_trained

        trained = load_trained(trained_model)
    results["interpretability"] = _interpret(best_src, tgt, target_labels, xs_best, xt_best, trained,
                                             max_length=max_length, seed=seed)

    first = distances[best_model][best_src.name]
    n_labeled = (target_labeled_rows if target_labeled_rows is not None
                 else tgt.n_total if target_labels is not None else 0)
    measurements = Measurements(
        n_source=best_src.n_total,
        n_target_unlabeled=tgt.n_total,
        n_target_labeled=n_labeled,
        mmd2=first["mmd2"], mmd_p_value=first["mmd_p_value"], pad=first["pad"], domain_auc=first["domain_auc"],
        model_scores=model_scores if len(models) > 1 else {},
        curve_ceiling=law.a if law is not None else None,
        curve_accuracy_at_available=(float(law(max(1, n_labeled))) if law is not None else None),
    )
    advice = advise(measurements, thresholds)
    if len(src) > 1 and "source_data" not in advice.settings:
        how = "highest LEEP" if by_leep else "smallest proxy A-distance"
        advice.settings["source_data"] = best_src.spec
        advice.reasons.insert(0, ("source", f"{len(src)} candidate sources", f"use {best_src.name}, the {how}"))
    results["advice"] = advice.to_dict()
    results["measurements"] = measurements.__dict__

    report = DiagnosticsReport(_clean(results), advice)
    if output_dir is not None:
        _write(report, Path(output_dir), feats, src, tgt, models, best_model, curve, law, target_accuracy,
               trained, trained_model, batch_size=batch_size, max_length=max_length, seed=seed)
    return report


def _short(model_name: str) -> str:
    return model_name.rstrip("/").split("/")[-1]


def _interpret(src: DomainSample, tgt: DomainSample, target_labels, xs, xt, trained, *, max_length: int,
               seed: int, num_errors: int = 5) -> dict[str, Any]:
    from ..instance import DensityRatioClassifier

    out: dict[str, Any] = {}
    weights = DensityRatioClassifier(cv=2, random_state=seed).fit(xs, xt).weights_
    out["most_target_like_sources"] = [
        {"source_row": i, "weight": w, "text": src.texts[i][:300]} for i, w in top_weighted_sources(weights, 5)
    ]
    if target_labels is None or src.labels is None:
        return out
    probs = source_classifier_outputs(xs, src.labels, xt, seed=seed)
    wrong = np.flatnonzero(probs.argmax(1) != target_labels)
    out["source_classifier_target_accuracy"] = float(1 - len(wrong) / len(xt))
    chosen = wrong[:num_errors]
    nb = nearest_source_neighbours(xs, xt, rows=chosen, k=2)
    out["errors_and_neighbours"] = [
        {"target_row": int(t), "label": int(target_labels[t]), "predicted": int(probs[t].argmax()),
         "text": tgt.texts[t][:300],
         "neighbours": [{"source_row": int(j), "label": int(src.labels[j]), "cosine": float(c),
                         "text": src.texts[j][:200]} for j, c in zip(nb.source_index[r], nb.similarity[r])]}
        for r, t in enumerate(nb.target_index)
    ]
    if trained is not None:
        model, tokenizer = trained
        attributions = []
        for t in chosen[:3]:
            tokens = token_attributions(model, tokenizer, tgt.texts[t], max_length=max_length)
            attributions.append({"target_row": int(t), "tokens": tokens})
        out["token_attributions"] = attributions
    return out


# ---------------------------------------------------------------------------------------------------------------
# Writing: PNGs, JSON, HTML
# ---------------------------------------------------------------------------------------------------------------


def _write(report, out: Path, feats, src, tgt, models, best_model, curve, law, target_accuracy, trained,
           trained_model, *,
           batch_size: int, max_length: int, seed: int) -> None:
    from ..hub import atomic_write_json, atomic_write_text
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    r = report.results
    images: dict[str, Path] = {}
    best_src = next(s for s in src if s.name == r["best_source"])
    panels = {f"pretrained {_short(best_model)}": (feats[best_model][best_src.name], feats[best_model]["__target__"])}
    if trained is not None:
        model, tokenizer = trained
        embed = dict(batch_size=batch_size, max_length=max_length)
        panels[f"after training ({Path(trained_model).name})"] = (
            extract_features(model, tokenizer, best_src.texts, desc="Embedding source (trained)", **embed),
            extract_features(model, tokenizer, tgt.texts, desc="Embedding target (trained)", **embed),
        )
    images["tsne"] = plots.tsne_plot(panels, out / PNG_NAMES["tsne"], names=(best_src.name, tgt.name), seed=seed)
    if curve is not None:
        images["curve"] = plots.learning_curve_plot(curve, law, out / PNG_NAMES["curve"],
                                                    target_accuracy=target_accuracy)
    panels: dict[str, dict[str, float]] = {}
    for kind in ("models", "sources"):
        for cand, vals in r["transferability"][kind].items():
            for score, v in vals.items():
                panels.setdefault(score, {})[_short(cand) if kind == "models" else cand] = v
    for s, d in r["distances"][best_model].items():
        panels.setdefault("proxy A-distance", {})[s] = d["pad"]
    panels = {k: v for k, v in panels.items() if len(v) > 1}  # a ranking of one candidate says nothing
    if panels:
        images["ranking"] = plots.ranking_plot(panels, out / PNG_NAMES["ranking"], title=f"ranking for {tgt.name}",
                                               lower_is_better=("proxy A-distance",))
    images["heatmap"] = plots.heatmap_plot(np.asarray(r["heatmap"]["pad"], dtype=float), r["heatmap"]["domains"],
                                           out / PNG_NAMES["heatmap"],
                                           title=f"domain distance ({_short(models[0])} features)")
    r["images"] = {k: p.name for k, p in images.items()}
    report.images = images
    report.json_path = out / "diagnostics.json"
    atomic_write_json(report.json_path, r)
    report.html_path = out / "report.html"
    atomic_write_text(report.html_path, render_html(r, report.advice, images))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}"
        return html.escape("n/a" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _attribution_html(tokens: list) -> str:
    peak = max((abs(s) for _, s in tokens), default=1.0) or 1.0
    spans = []
    for tok, s in tokens:
        alpha = min(1.0, abs(s) / peak)
        colour = f"rgba(0,128,0,{alpha:.2f})" if s >= 0 else f"rgba(200,0,0,{alpha:.2f})"
        spans.append(f'<span class="tok" style="background:{colour}" title="{s:.3g}">{html.escape(tok)}</span>')
    return " ".join(spans)


def render_html(r: dict[str, Any], advice, images: dict[str, Path]) -> str:
    """The self-contained report: every image inlined as a base64 ``data:`` URI, no external CSS or script."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>hf-transfer diagnostics</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
        "th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}img{max-width:100%}"
        ".tok{padding:1px 2px;border-radius:3px;font-family:monospace}</style></head><body>",
        "<h1>Transfer diagnostics</h1>",
        f"<p>source: {html.escape(', '.join(r['source']))}<br>target: {html.escape(r['target'])}<br>"
        f"models: {html.escape(', '.join(r['models']))}<br>rows sampled per domain: {r['max_samples']}; "
        f"target labels used: {r['target_labels_used']}</p>",
        "<h2>Recommendation</h2>",
        _table(["rule", "measured", "verdict"], [list(x) for x in advice.reasons]),
        f"<p><b>method:</b> <code>{html.escape(advice.method)}</code>; <b>settings:</b> "
        f"<code>{html.escape(json.dumps(advice.settings))}</code></p>",
        "<h2>Domain gap</h2>",
    ]
    rows = []
    for model, by_source in r["distances"].items():
        for s, d in by_source.items():
            rows.append([_short(model), s, d["mmd2"], d["mmd_p_value"], d["pad"], d["domain_auc"], d["coral"]])
    parts.append(_table(["model", "source", "MMD^2", "p-value", "proxy A-distance", "domain AUC", "CORAL"], rows))
    for key in ("tsne", "heatmap"):
        if key in images:
            parts.append(_img(images[key], {"tsne": "source vs target features (t-SNE)",
                                            "heatmap": "domain similarity"}[key]))
    parts.append("<h2>Transferability</h2>")
    for kind, header in (("models", "model"), ("sources", "source")):
        block = r["transferability"][kind]
        if block:
            names = sorted({k for v in block.values() for k in v})
            parts.append(_table([header, *names], [[c, *[v.get(n) for n in names]] for c, v in block.items()]))
    if "ranking" in images:
        parts.append(_img(images["ranking"], "rankings of the candidate models and sources"))
    if "learning_curve" in r:
        parts.append("<h2>Data sufficiency</h2>")
        law = r.get("power_law", {})
        if "a" in law:
            text = (f"Fitted accuracy(n) = {law['a']:.3f} - {law['b']:.3g} n^-{law['c']:.2f}: about "
                    f"{law['accuracy_at_all_target_rows']:.3f} with all target rows, "
                    f"{law['accuracy_at_10x_target_rows']:.3f} with ten times as many.")
            if "labels_needed" in law:
                needed = law["labels_needed"]
                text += (f" Accuracy {law['wanted_accuracy']:.3f} needs about "
                         f"{'no finite number of' if needed is None else f'{needed:,.0f}'} labelled rows.")
            parts.append(f"<p>{html.escape(text)}</p>")
        if "curve" in images:
            parts.append(_img(images["curve"], "learning curve"))
    interp = r.get("interpretability", {})
    if interp:
        parts.append("<h2>What drives the predictions</h2>")
        if "source_classifier_target_accuracy" in interp:
            parts.append(f"<p>Source classifier (logistic regression on frozen features) target accuracy: "
                         f"{interp['source_classifier_target_accuracy']:.3f}. Some of its target errors and the "
                         "nearest source rows:</p>")
            rows = [[e["text"], e["label"], e["predicted"],
                     " | ".join(f"[{n['label']}, cos {n['cosine']:.2f}] {n['text']}" for n in e["neighbours"])]
                    for e in interp.get("errors_and_neighbours", [])]
            parts.append(_table(["target text", "label", "predicted", "nearest source rows"], rows))
        parts.append("<p>Most target-like source rows (density-ratio weight):</p>")
        parts.append(_table(["weight", "text"], [[x["weight"], x["text"]]
                                                 for x in interp["most_target_like_sources"]]))
        for a in interp.get("token_attributions", []):
            parts.append(f"<p>target row {a['target_row']} (gradient x input): "
                         f"{_attribution_html(a['tokens'])}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
