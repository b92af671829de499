"""Relation-based transfer on the FDU-MTL review domains: does the knowledge graph help?

Part ``sources`` — held-out-domain transfer. One domain is the target (``--target``, default camera_photo); the
other seven are candidate sources. Every condition trains the packaged all-MiniLM-L6-v2 sentiment classifier on the
same budget (``--rows`` source rows, ``--steps`` steps of ``--batch_size``) and is scored on the target's test split:

* ``graph`` — the ``--k`` sources the shipped review-domain graph ranks closest (personalised PageRank), rows in
  proportion to the graph weights (:func:`hf_transfer.relation.rank_sources` + :func:`mix_sources`);
* ``graph_data`` — the same, on a graph *extracted from the data* (salient terms per domain by log-odds, term
  co-occurrence; the target's texts, not its labels, take part);
* ``all`` — all seven sources, equal shares;
* ``random`` — ``--k`` sources drawn at random (``--seed``), equal shares.

Part ``labels`` — label-relation transfer when the label sets differ. The task is "which product domain is this
review from?". A source classifier learns five domains (books, dvd, electronics, kitchen_housewares,
health_personal_care); the target task has five others, three never seen by the source (books, electronics,
music, camera_photo, apparel). Both target conditions start from the source encoder; the head is either fresh
(``fresh``) or initialised through the graph (``label_relation``). Scored zero-shot (no target label; a
learning rate of 0) and after ``--fewshot_steps`` steps on ``--fewshot_per_class`` labelled rows per class.

    nice -n 15 .venv/bin/python benchmarks/relation.py                   # the reduced CPU budget reported
    nice -n 15 .venv/bin/python benchmarks/relation.py --part labels --steps 20 --out /tmp/relation.md

Writes a markdown report (``--out``, default benchmarks/results/relation.md) with the command, machine and date,
and the raw metrics beside it as JSON. Offline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._machine import machine_header, markdown_table  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fdu_mtl"
DOMAINS = ["books", "dvd", "electronics", "kitchen_housewares", "apparel", "camera_photo", "health_personal_care",
           "music"]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_CLASSES = ["books", "dvd", "electronics", "kitchen_housewares", "health_personal_care"]
TARGET_CLASSES = ["books", "electronics", "music", "camera_photo", "apparel"]


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def base_recipe(args, out: Path, steps: int, lr: float) -> dict:
    return {
        "model_name_or_path": MODEL, "max_length": args.max_length, "output_dir": str(out), "max_steps": steps,
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": 64, "learning_rate": lr,
        "warmup_steps": max(1, steps // 10), "save_strategy": "no", "logging_steps": max(1, steps // 4),
        "seed": args.seed, "disable_tqdm": True, "report_to": "none", "target_data": None,
        "selection_validators": [], "source_eval_fraction": 0.0, "use_cpu": True,
        "freeze_backbone": args.freeze_backbone,
    }


def run(recipe: dict) -> dict:
    from hf_transfer import train

    start = time.time()
    metrics = train(recipe).metrics
    metrics["wall_s"] = time.time() - start
    return metrics


# ---- part 1: source selection ----------------------------------------------------------------------------------


def part_sources(args, work: Path) -> dict:
    from hf_transfer.relation import (
        REVIEW_DOMAINS_GRAPH,
        KnowledgeGraph,
        RankedSource,
        graph_from_texts,
        mix_sources,
        rank_sources,
    )

    candidates = [d for d in DOMAINS if d != args.target]
    files = {d: str(DATA / f"{d}.train.jsonl") for d in DOMAINS}
    shipped = KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH)
    texts, groups = [], []
    for d in DOMAINS:  # target texts take part (unlabelled), as they would for a new domain
        rows = read_jsonl(DATA / f"{d}.train.jsonl")[: args.extract_rows]
        texts += [r["text"] for r in rows]
        groups += [d] * len(rows)
    t0 = time.time()
    extracted = graph_from_texts(texts, groups, top_k=40, min_count=5, min_cooccurrence=10)
    extract_s = time.time() - t0
    rng = random.Random(args.seed)
    picks = rng.sample(candidates, args.k)
    conditions = {
        "graph": rank_sources(shipped, args.target, candidates, top_k=args.k),
        "graph_data": rank_sources(extracted, args.target, candidates, top_k=args.k),
        "all": [RankedSource(d, d, 1.0, 1.0 / len(candidates)) for d in candidates],
        "random": [RankedSource(d, d, 1.0, 1.0 / args.k) for d in sorted(picks)],
    }
    results = {"extract_s": extract_s, "extracted_graph": repr(extracted), "conditions": {}}
    for name, ranked in conditions.items():
        if args.only and name not in args.only:
            continue
        source = work / f"sources_{name}.jsonl"
        used = mix_sources(ranked, files, source, total_rows=args.rows, seed=args.seed)
        recipe = base_recipe(args, work / f"out_{name}", args.steps, args.lr)
        recipe.update(source_data=str(source), eval_data=str(DATA / f"{args.target}.test.jsonl"),
                      max_eval_samples=args.eval_rows, class_names=["negative", "positive"])
        metrics = run(recipe)
        results["conditions"][name] = {
            "sources": {r.name: round(r.weight, 3) for r in ranked}, "rows": used,
            "target_accuracy": metrics["target_accuracy"], "target_macro_f1": metrics["target_macro_f1"],
            "wall_s": metrics["wall_s"],
        }
        print(name, results["conditions"][name], flush=True)
    return results


# ---- part 2: label relation --------------------------------------------------------------------------------------


def domain_rows(domains: list[str], split: str, per_class: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for d in domains:
        table = read_jsonl(DATA / f"{d}.{split}.jsonl")
        rows += [{"text": r["text"], "label": d} for r in rng.sample(table, per_class)]
    rng.shuffle(rows)
    return rows


def part_labels(args, work: Path) -> dict:
    source = write_jsonl(work / "domains_source.jsonl", domain_rows(SOURCE_CLASSES, "train", args.rows // 5,
                                                                     args.seed))
    fewshot = write_jsonl(work / "domains_fewshot.jsonl", domain_rows(TARGET_CLASSES, "train",
                                                                       args.fewshot_per_class, args.seed + 1))
    evaluation = write_jsonl(work / "domains_eval.jsonl", domain_rows(TARGET_CLASSES, "test",
                                                                       args.eval_rows // 5, args.seed + 2))
    recipe = base_recipe(args, work / "domain_source_model", args.steps, args.lr)
    recipe.update(source_data=source, eval_data=str(work / "domains_source_eval.jsonl"))
    write_jsonl(work / "domains_source_eval.jsonl", domain_rows(SOURCE_CLASSES, "test", args.eval_rows // 5,
                                                                args.seed + 3))
    source_metrics = run(recipe)
    print("source model", source_metrics["target_accuracy"], flush=True)
    results = {"source_accuracy_on_its_classes": source_metrics["target_accuracy"],
               "source_wall_s": source_metrics["wall_s"], "conditions": {}}
    for head in ("fresh", "label_relation"):
        for phase, steps, lr in (("zero_shot", 1, 0.0), ("few_shot", args.fewshot_steps, args.lr)):
            recipe = base_recipe(args, work / f"domain_{head}_{phase}", steps, lr)
            recipe.update(model_name_or_path=str(work / "domain_source_model"), source_data=fewshot,
                          eval_data=evaluation)
            if head == "label_relation":
                recipe.update(method=["label_relation"], label_relation={"graph": "review_domains"})
            metrics = run(recipe)
            key = f"{head}/{phase}"
            results["conditions"][key] = {
                "target_accuracy": metrics["target_accuracy"], "target_macro_f1": metrics["target_macro_f1"],
                "steps": steps if lr > 0 else 0, "wall_s": metrics["wall_s"],
                **{k: v for k, v in metrics.items() if k.startswith("label_relation/")},
            }
            print(key, results["conditions"][key], flush=True)
    return results


# ---- part 3: the same questions on frozen sentence embeddings (cheap enough for every target and many draws) ----


def part_probe(args, work: Path) -> dict:
    """Frozen mean-pooled MiniLM embeddings + softmax regression: every FDU-MTL domain held out in turn (graph vs
    all vs ``--random_draws`` random subsets), and the label-relation case over ``--probe_seeds`` few-shot draws."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from hf_transfer.relation import (
        REVIEW_DOMAINS_GRAPH,
        KnowledgeGraph,
        encoder_embedder,
        graph_from_texts,
        label_transfer_plan,
        rank_sources,
    )

    embed = encoder_embedder(MODEL, max_length=args.max_length)
    pools: dict[str, dict] = {}
    start = time.time()
    for d in DOMAINS:
        for split, n in (("train", args.probe_train_rows), ("test", args.eval_rows)):
            rows = random.Random(args.seed).sample(read_jsonl(DATA / f"{d}.{split}.jsonl"), n)
            pools[f"{d}.{split}"] = {"x": embed([r["text"] for r in rows]), "y": np.array([r["label"] for r in rows])}
    embed_s = time.time() - start
    shipped = KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH)
    texts, groups = [], []
    for d in DOMAINS:
        rows = read_jsonl(DATA / f"{d}.train.jsonl")[: args.extract_rows]
        texts += [r["text"] for r in rows]
        groups += [d] * len(rows)
    extracted = graph_from_texts(texts, groups, top_k=40, min_count=5, min_cooccurrence=10)

    def fit_score(weights: dict[str, float], target: str, seed: int) -> float:
        rng = np.random.default_rng(seed)
        total = args.probe_rows
        xs, ys = [], []
        for d, w in weights.items():
            n = min(int(round(w * total)), len(pools[f"{d}.train"]["y"]))
            idx = rng.choice(len(pools[f"{d}.train"]["y"]), n, replace=False)
            xs.append(pools[f"{d}.train"]["x"][idx])
            ys.append(pools[f"{d}.train"]["y"][idx])
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(np.concatenate(xs), np.concatenate(ys))
        test = pools[f"{target}.test"]
        return float((clf.predict(test["x"]) == test["y"]).mean())

    sources = {}
    for target in DOMAINS:
        candidates = [d for d in DOMAINS if d != target]
        row = {}
        for name, kg in (("graph", shipped), ("graph_data", extracted)):
            ranked = rank_sources(kg, target, candidates, top_k=args.k)
            row[name] = fit_score({r.name: r.weight for r in ranked}, target, args.seed)
            row[f"{name}_sources"] = [r.name for r in ranked]
        row["all"] = fit_score({d: 1 / len(candidates) for d in candidates}, target, args.seed)
        rng = random.Random(args.seed)
        draws = [fit_score({d: 1 / args.k for d in rng.sample(candidates, args.k)}, target, args.seed + i)
                 for i in range(args.random_draws)]
        row["random_mean"], row["random_std"] = float(np.mean(draws)), float(np.std(draws))
        sources[target] = row
        print("probe", target, row, flush=True)

    # Label relation on the same embeddings: a source softmax regression over SOURCE_CLASSES (domain = label).
    def domain_xy(classes, split, per_class, seed):
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for c, d in enumerate(classes):
            pool = pools[f"{d}.{split}"]["x"]
            xs.append(pool[rng.choice(len(pool), per_class, replace=False)])
            ys.append(np.full(per_class, c))
        return np.concatenate(xs), np.concatenate(ys)

    xs, ys = domain_xy(SOURCE_CLASSES, "train", args.probe_rows // len(SOURCE_CLASSES), args.seed)
    source_clf = LogisticRegression(max_iter=2000).fit(xs, ys)
    plan = label_transfer_plan(shipped, TARGET_CLASSES, SOURCE_CLASSES, hops=2, decay=0.5)
    xt, yt = domain_xy(TARGET_CLASSES, "test", args.eval_rows // len(TARGET_CLASSES), args.seed)

    def train_head(w0, b0, x, y, steps):
        w = torch.tensor(w0, dtype=torch.float32, requires_grad=True)
        b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=args.probe_lr)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(x @ w.T + b, y).backward()
            opt.step()
        with torch.no_grad():
            pred = (torch.tensor(xt, dtype=torch.float32) @ w.T + b).argmax(1).numpy()
        return float((pred == yt).mean())

    graph_w = plan.matrix @ source_clf.coef_
    graph_b = plan.matrix @ source_clf.intercept_
    labels = {"graph_zero_shot": train_head(graph_w, graph_b, xt[:1], yt[:1], 0), "fresh": [], "graph": []}
    for seed in range(args.probe_seeds):
        x, y = domain_xy(TARGET_CLASSES, "train", args.fewshot_per_class, args.seed + 100 + seed)
        fresh_w = np.random.default_rng(seed).normal(0, 0.02, graph_w.shape)  # the transformers head init (std 0.02)
        labels["fresh"].append(train_head(fresh_w, np.zeros(len(TARGET_CLASSES)), x, y, args.fewshot_steps))
        labels["graph"].append(train_head(graph_w, graph_b, x, y, args.fewshot_steps))
    labels["fresh_zero_shot"] = float(np.mean([
        train_head(np.random.default_rng(s).normal(0, 0.02, graph_w.shape), np.zeros(len(TARGET_CLASSES)),
                   xt[:1], yt[:1], 0) for s in range(args.probe_seeds)]))
    labels["plan"] = plan.to_dict()
    print("probe labels", labels, flush=True)
    return {"embed_s": embed_s, "sources": sources, "labels": labels}


def report(args, results: dict) -> str:
    extra = {"model": f"{MODEL} (packaged copy), max_length {args.max_length}, seed {args.seed}"}
    if "sources" in results or "labels" in results:  # the hf_transfer.train() parts
        extra["training"] = (
            f"batch {args.batch_size}, learning rate {args.lr}, "
            + ("frozen backbone (only the heads train)" if args.freeze_backbone else "full fine-tuning")
            + f"; {args.steps} steps on {args.rows} source rows; {args.eval_rows} evaluation rows; one seed"
        )
    lines = ["# Relation-based transfer (knowledge graphs) on FDU-MTL", "", machine_header(extra), ""]
    if "sources" in results:
        r = results["sources"]
        lines += [f"## Held-out target `{args.target}`: which sources to train on (same budget)", "",
                  markdown_table(["condition", "sources (weight)", "target accuracy", "target macro-F1", "wall s"], [
                      [name, ", ".join(f"{s} {w:.2f}" for s, w in c["sources"].items()),
                       f"{c['target_accuracy']:.3f}", f"{c['target_macro_f1']:.3f}", f"{c['wall_s']:.0f}"]
                      for name, c in r["conditions"].items()], align="llrrr"), "",
                  f"Extracted graph: {r['extracted_graph']}, built in {r['extract_s']:.1f} s "
                  f"from {args.extract_rows} texts per domain.", ""]
    if "labels" in results:
        r = results["labels"]
        lines += ["## Label relation: target classes differ from the source's", "",
                  f"Source classifier: {', '.join(SOURCE_CLASSES)} ({args.steps} steps; accuracy on its own "
                  f"classes {r['source_accuracy_on_its_classes']:.3f}). Target classes: {', '.join(TARGET_CLASSES)} "
                  f"(music, camera_photo, apparel unseen). Few-shot: {args.fewshot_per_class} rows per class, "
                  f"{args.fewshot_steps} steps. Chance = 0.200.", "",
                  markdown_table(["head", "phase", "steps", "target accuracy", "target macro-F1"], [
                      [k.split("/")[0], k.split("/")[1], c["steps"], f"{c['target_accuracy']:.3f}",
                       f"{c['target_macro_f1']:.3f}"] for k, c in r["conditions"].items()], align="llrrr"), ""]
    if "probe" in results:
        r = results["probe"]
        rows = [[t, ", ".join(c["graph_sources"]), f"{c['graph']:.3f}", f"{c['graph_data']:.3f}", f"{c['all']:.3f}",
                 f"{c['random_mean']:.3f} ± {c['random_std']:.3f}"] for t, c in r["sources"].items()]
        mean = {k: sum(c[k] for c in r["sources"].values()) / len(r["sources"])
                for k in ("graph", "graph_data", "all", "random_mean")}
        rows.append(["**mean**", "", f"**{mean['graph']:.3f}**", f"**{mean['graph_data']:.3f}**",
                     f"**{mean['all']:.3f}**", f"**{mean['random_mean']:.3f}**"])
        lab = r["labels"]
        lines += ["## Frozen-embedding probe (every target, many draws)", "",
                  f"Mean-pooled all-MiniLM-L6-v2 embeddings (max_length {args.max_length}; {args.probe_train_rows} "
                  f"train rows per domain embedded once in {r['embed_s']:.0f} s), scikit-learn logistic regression on "
                  f"{args.probe_rows} source rows drawn by the condition's weights, accuracy on {args.eval_rows} "
                  f"target test rows. random = mean ± std over {args.random_draws} draws of {args.k} sources.", "",
                  markdown_table(["target", "graph picks", "graph", "graph_data", "all", "random"], rows,
                                 align="llrrrr"), "",
                  f"Label relation on the same embeddings (source: {', '.join(SOURCE_CLASSES)}; target: "
                  f"{', '.join(TARGET_CLASSES)}): zero-shot accuracy with the graph-initialised head "
                  f"**{lab['graph_zero_shot']:.3f}** vs a fresh head {lab['fresh_zero_shot']:.3f} (chance 0.200); "
                  f"after {args.fewshot_steps} Adam steps (lr {args.probe_lr}) on {args.fewshot_per_class} rows per "
                  f"class, over {args.probe_seeds} few-shot draws: graph init "
                  f"**{sum(lab['graph']) / len(lab['graph']):.3f}** (min {min(lab['graph']):.3f}), fresh head "
                  f"{sum(lab['fresh']) / len(lab['fresh']):.3f} (min {min(lab['fresh']):.3f}).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["sources", "labels", "probe", "all"], nargs="+", default=["all"])
    parser.add_argument("--target", default="camera_photo", choices=DOMAINS)
    parser.add_argument("--k", type=int, default=3, help="sources kept by graph and random selection")
    parser.add_argument("--only", nargs="*", help="run only these source conditions (graph graph_data all random)")
    parser.add_argument("--rows", type=int, default=1000, help="source rows of every condition")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--eval_rows", type=int, default=200)
    parser.add_argument("--extract_rows", type=int, default=400, help="texts per domain for the extracted graph")
    parser.add_argument("--fewshot_per_class", type=int, default=8)
    parser.add_argument("--fewshot_steps", type=int, default=15)
    parser.add_argument("--probe_train_rows", type=int, default=400, help="probe: embedded train rows per domain")
    parser.add_argument("--probe_rows", type=int, default=600, help="probe: source rows per condition")
    parser.add_argument("--random_draws", type=int, default=10)
    parser.add_argument("--probe_seeds", type=int, default=5)
    parser.add_argument("--probe_lr", type=float, default=1e-2)
    parser.add_argument("--freeze_backbone", action="store_true",
                        help="train only the classification heads (a linear probe): about 3x cheaper on a CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "relation.md"))
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="relation-bench-") as tmp:
        work = Path(tmp)
        if {"sources", "all"} & set(args.part):
            results["sources"] = part_sources(args, work)
        if {"labels", "all"} & set(args.part):
            results["labels"] = part_labels(args, work)
        if {"probe", "all"} & set(args.part):
            results["probe"] = part_probe(args, work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(args, results) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), **results}, indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
