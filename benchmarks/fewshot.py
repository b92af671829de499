"""Few-shot sentiment on FDU-MTL review domains held out from meta-training: plain fine-tuning from the pretrained
encoder vs prototypical networks vs first-order MAML vs Reptile, K shots per class, mean accuracy ± 95% interval.

Meta-training draws 2-way episodes (negative / positive, ``--k_shot`` support + ``--n_query`` query rows per class)
from the ``--train_domains``; evaluation draws ``--episodes`` 2-way K-shot episodes per held-out domain and K, the K
shots from ``<domain>.train.jsonl`` (a seeded balanced pool of ``--pool`` rows) and ``--n_query`` query rows per
class from ``<domain>.test.jsonl`` (a pool of ``--query_pool`` rows). Every method sees the same episodes (the same
seed), so the comparison is paired. The interval is the Student-t 95% interval over all episodes of all held-out
domains for that K.

Methods (each a row of the table):

* ``finetune-probe``: the pretrained encoder, frozen; a new linear head fine-tuned on the K shots (AdamW);
* ``finetune-full``: the pretrained encoder and a new head, every weight fine-tuned on the K shots (only for the
  K in ``--full_finetune_shots`` and the first ``--full_finetune_domains`` held-out domains: it costs a training
  run per episode);
* ``protonet-pretrained``: nearest class prototype with the pretrained encoder (no meta-training);
* ``protonet`` / ``fomaml`` / ``reptile`` / ``hypernet``: the encoder meta-trained for ``--meta_steps`` episodes,
  then adapted as it was trained (prototypes; a prototype-initialised head tuned by ``inner_steps`` SGD steps;
  the generated head). FOMAML's inner loop adapts the head only (ANIL), Reptile's the whole encoder; at evaluation
  both adapt the head only (the encoder's inner loop per episode is what this CPU budget cannot pay for).

    nice -n 15 .venv/bin/python benchmarks/fewshot.py                # reduced budget: ~11 min on 2 busy cores
    nice -n 15 .venv/bin/python benchmarks/fewshot.py --meta_steps 4 --episodes 3 --shots 4 --out /tmp/f.md

Writes ``--out`` (default benchmarks/results/fewshot.md) with the command, machine and date, and the raw episode
accuracies beside it as JSON. Runs offline with the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO.parent / "shared" / "data" / "fdu_mtl"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def balanced_rows(path: Path, count: int, seed: int) -> list[dict]:
    import numpy as np

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({r["label"] for r in rows}):
        of_class = [r for r in rows if r["label"] == label]
        out += [of_class[i] for i in rng.permutation(len(of_class))[: count // 2]]
    return out


def tokenize_rows(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             **({"token_type_ids": enc["token_type_ids"][i]} if "token_type_ids" in enc else {})}
            for i in range(len(rows))]


def meta_recipe(args, method: str, out: Path) -> dict:
    recipe = {
        "model_name_or_path": MODEL, "meta_method": method, "n_way": 2, "k_shot": args.k_shot,
        "n_query": args.n_query_train, "max_length": args.max_length, "max_steps": args.meta_steps,
        "learning_rate": args.meta_lr, "warmup_steps": 0, "seed": args.seed, "eval_shots": [],
        "logging_steps": max(1, args.meta_steps // 3), "output_dir": str(out), "use_cpu": True,
        "tasks": [{"name": d, "data": str(DATA / f"{d}.train.jsonl"), "eval_data": str(DATA / f"{d}.test.jsonl"),
                   "max_train_samples": args.train_rows, "max_eval_samples": 8} for d in args.train_domains],
    }
    if method == "fomaml":
        recipe.update(inner_params="head", inner_steps=args.inner_steps, inner_lr=args.head_inner_lr)
    if method == "reptile":
        recipe.update(inner_params="all", inner_steps=args.inner_steps, inner_lr=args.reptile_inner_lr,
                      learning_rate=args.reptile_outer_lr)
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_domains", nargs="+", default=["books", "dvd", "electronics", "kitchen_housewares"])
    parser.add_argument("--test_domains", nargs="+", default=["apparel", "music"])
    parser.add_argument("--shots", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--n_query", type=int, default=16, help="evaluation query rows per class")
    parser.add_argument("--pool", type=int, default=64, help="support pool rows per held-out domain (balanced)")
    parser.add_argument("--query_pool", type=int, default=64, help="query pool rows per held-out domain (balanced)")
    parser.add_argument("--methods", nargs="+",
                        default=["finetune-probe", "finetune-full", "protonet-pretrained", "protonet", "fomaml",
                                 "reptile"], help="also: hypernet")
    parser.add_argument("--full_finetune_shots", nargs="*", type=int, default=[4])
    parser.add_argument("--full_finetune_domains", type=int, default=1,
                        help="full fine-tuning on the first N held-out domains only (a training run per episode)")
    parser.add_argument("--finetune_steps", type=int, default=5)
    parser.add_argument("--meta_steps", type=int, default=20)
    parser.add_argument("--meta_lr", type=float, default=3e-5)
    parser.add_argument("--k_shot", type=int, default=4, help="meta-training shots per class")
    parser.add_argument("--n_query_train", type=int, default=4, help="meta-training query rows per class")
    parser.add_argument("--inner_steps", type=int, default=2)
    parser.add_argument("--head_inner_lr", type=float, default=0.05)
    parser.add_argument("--reptile_inner_lr", type=float, default=5e-3)
    parser.add_argument("--reptile_outer_lr", type=float, default=0.5)
    parser.add_argument("--train_rows", type=int, default=200, help="rows per meta-training domain")
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, busy CPU, more threads mostly wait on each other)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fewshot.md"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from _machine import machine_header, markdown_table

    from hf_transfer.backbones import load_tokenizer
    from hf_transfer.meta import RowPool, evaluate_few_shot, load_meta_learner, mean_confidence_interval, train_meta

    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(MODEL)
    pools = {}
    for d in args.test_domains:
        support = balanced_rows(DATA / f"{d}.train.jsonl", args.pool, args.seed)
        query = balanced_rows(DATA / f"{d}.test.jsonl", args.query_pool, args.seed + 1)
        pools[d] = (tokenize_rows(support, tokenizer, args.max_length), [r["label"] for r in support],
                    tokenize_rows(query, tokenizer, args.max_length), [r["label"] for r in query])

    results: dict[str, dict] = {}
    timing: dict[str, float] = {}

    # One pool object per table: embeddings are cached per learner, so methods sharing the pretrained encoder embed
    # each row once.
    support_pools = {d: RowPool(p[0], tokenizer) for d, p in pools.items()}
    query_pools = {d: RowPool(p[2], tokenizer) for d, p in pools.items()}

    def score(name: str, learner, adapt: str, shots_list, domains=None) -> None:
        start = time.time()
        for k in shots_list:
            accs = []
            for d, (_, s_labels, _, q_labels) in pools.items():
                if domains and d not in domains:
                    continue
                r = evaluate_few_shot(learner, support_pools[d], s_labels, shots=k, adapt=adapt,
                                      episodes=args.episodes, n_query=args.n_query, query=query_pools[d],
                                      query_labels=q_labels, seed=args.seed)
                accs += r.accuracies
            mean, half = mean_confidence_interval(accs)
            results.setdefault(name, {})[k] = {"accuracy": mean, "ci95": half, "episodes": len(accs),
                                               "accuracies": accs}
            print(f"{name:20s} K={k:2d}: {mean:.4f} ± {half:.4f} ({len(accs)} episodes)", flush=True)
        timing[f"{name} evaluation"] = time.time() - start

    settings = {"finetune_steps": args.finetune_steps}
    start_all = time.time()
    pretrained, _ = load_meta_learner(MODEL, **settings)
    if "finetune-probe" in args.methods:
        score("finetune-probe", pretrained, "probe", args.shots)
    if "finetune-full" in args.methods and args.full_finetune_shots:
        score("finetune-full", pretrained, "finetune", args.full_finetune_shots,
              domains=args.test_domains[: args.full_finetune_domains])
    if "protonet-pretrained" in args.methods:
        score("protonet-pretrained", pretrained, "protonet", args.shots)
    for method in ("protonet", "fomaml", "reptile", "hypernet"):
        if method not in args.methods:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            result = train_meta(meta_recipe(args, method, Path(tmp) / method))
            timing[f"{method} meta-training"] = time.time() - start
            learner = result.learner.eval()
            if method == "reptile":
                learner.config.inner_params = "head"  # adapt the head only at evaluation (see the docstring)
                learner.config.inner_lr = args.head_inner_lr
            adapt = {"protonet": "protonet", "fomaml": "maml", "reptile": "maml", "hypernet": "hypernet"}[method]
            score(method, learner, adapt, args.shots)
    total = time.time() - start_all

    header = ["method", *[f"K={k}" for k in args.shots]]
    rows = []
    for name, by_k in results.items():
        rows.append([name, *[f"{by_k[k]['accuracy']:.3f} ± {by_k[k]['ci95']:.3f}" if k in by_k else "—"
                             for k in args.shots]])
    budget = (f"meta-training {args.meta_steps} episodes of 2-way {args.k_shot}-shot + {args.n_query_train} queries "
              f"per class on {', '.join(args.train_domains)} ({args.train_rows} rows each); evaluation "
              f"{args.episodes} episodes per held-out domain and K, {args.n_query} queries per class, pools of "
              f"{args.pool} support / {args.query_pool} query rows; max_length {args.max_length}; fine-tuning "
              f"{args.finetune_steps} AdamW steps (encoder 3e-5, head 1e-2)")
    text = "\n".join([
        "# Few-shot sentiment on held-out FDU-MTL domains",
        "",
        machine_header({"model": MODEL, "held-out domains": ", ".join(args.test_domains),
                        "budget (reduced for a shared 2-core CPU)": budget,
                        "wall time": f"{total:.0f} s"}),
        "",
        "Accuracy, mean ± 95% interval half width (Student t) over "
        f"{args.episodes} episodes per held-out domain (2-way, the same episodes for every method; finetune-full on "
        f"{', '.join(args.test_domains[: args.full_finetune_domains])} only):",
        "",
        markdown_table(header, rows),
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()),
        "",
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results, "timing": timing,
                                                    "wall_time_s": total}, indent=1), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
