"""Instance-weighted vs unweighted fine-tuning of the packaged all-MiniLM-L6-v2 on Amazon review pairs.

For each source->target pair and seed, the same recipe (``recipes/text_classification/finetune.yaml``) runs twice
with one budget: plain supervised fine-tuning on the source (the baseline), and ``method: instance_weighting``
(weights from a frozen pass of the pretrained encoder, estimator ``--estimator``; the weighted cross-entropy then
trains every parameter). The target file is the unlabelled ``target_data`` and, subsampled to
``--max_eval_samples`` rows, the labelled evaluation set. Runs alternate baseline / weighted so machine load falls on
both alike.

    python benchmarks/amazon_instance.py --output benchmarks/results/amazon_instance.md
    python benchmarks/amazon_instance.py --pairs books:kitchen dvd:electronics --seeds 1 2 3 --estimator kmm
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
AMAZON = REPO.parent / "shared" / "data" / "amazon"
RECIPE = REPO / "recipes" / "text_classification" / "finetune.yaml"


def run(args, pair: str, weighted: bool, seed: int) -> dict:
    import hf_transfer

    source, target = pair.split(":")
    target_file = str(AMAZON / f"{target}.jsonl")
    name = f"{source}2{target}_{'weighted' if weighted else 'plain'}_{seed}"
    overrides = {
        "source_data": str(AMAZON / f"{source}.jsonl"),
        "target_data": target_file,
        "eval_data": target_file,
        "max_eval_samples": args.max_eval_samples,
        "output_dir": str(Path(args.workdir) / name),
        "max_steps": args.max_steps,
        "max_length": args.max_length,
        "per_device_train_batch_size": args.batch_size,
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": 50,
        "seed": seed,
    }
    if weighted:
        overrides.update({
            "method": ["instance_weighting"],
            "instance_weighting.estimator": args.estimator,
            "instance_weighting.estimator_args": f"{{max_weight: {args.max_weight}}}"
            if args.estimator == "density_ratio" else "{}",
        })
    start = time.time()
    result = hf_transfer.train(RECIPE, **overrides)
    m = result.metrics
    return {
        "target_accuracy": m["target_accuracy"],
        "source_accuracy": m["source_accuracy"],
        "ess_ratio": m.get("instance_weights/ess_ratio", 1.0),
        "max_weight": m.get("instance_weights/max", 1.0),
        "seconds": time.time() - start,
    }


def main() -> None:
    import torch
    from _machine import machine_header

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["books:kitchen", "electronics:dvd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--estimator", default="density_ratio")
    parser.add_argument("--max_weight", type=float, default=10.0)
    parser.add_argument("--max_steps", type=int, default=100)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_eval_samples", type=int, default=1000)
    parser.add_argument("--workdir", default="outputs/benchmarks/amazon_instance")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    rows = []
    for pair in args.pairs:
        for seed in args.seeds:
            plain = run(args, pair, False, seed)
            weighted = run(args, pair, True, seed)
            rows.append((pair, seed, plain, weighted))
            print(f"{pair} seed {seed}: plain {plain['target_accuracy']:.4f} "
                  f"weighted {weighted['target_accuracy']:.4f}", file=sys.stderr, flush=True)

    budget = (
        f"{args.max_steps} steps x batch {args.batch_size}, max_length {args.max_length}, recipe finetune.yaml "
        f"(lr 1e-4), torch {torch.__version__}; weights: `{args.estimator}` on mean-pooled frozen MiniLM features"
        + (f", capped at {args.max_weight:g}" if args.estimator == "density_ratio" else "")
        + f"; target accuracy on {args.max_eval_samples} target reviews"
    )
    lines = [
        "## Instance-weighted vs unweighted fine-tuning, Amazon reviews, all-MiniLM-L6-v2",
        "",
        machine_header({"budget (both arms)": budget}),
        "",
        "| pair | seed | unweighted (baseline) | weighted | Δ (points) | ESS / n | max weight | s (plain/weighted) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, seed, plain, weighted in rows:
        delta = 100 * (weighted["target_accuracy"] - plain["target_accuracy"])
        lines.append(
            f"| {pair.replace(':', '→')} | {seed} | {100 * plain['target_accuracy']:.1f} | "
            f"{100 * weighted['target_accuracy']:.1f} | {delta:+.1f} | {weighted['ess_ratio']:.2f} | "
            f"{weighted['max_weight']:.2f} | {plain['seconds']:.0f} / {weighted['seconds']:.0f} |"
        )
    mean_plain = statistics.mean(100 * r[2]["target_accuracy"] for r in rows)
    mean_weighted = statistics.mean(100 * r[3]["target_accuracy"] for r in rows)
    lines.append(f"| **mean** | | **{mean_plain:.1f}** | **{mean_weighted:.1f}** | "
                 f"**{mean_weighted - mean_plain:+.1f}** | | | |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
