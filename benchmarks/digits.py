"""MNIST -> USPS and USPS -> MNIST with EfficientNet-Lite0 (ImageNet weights): source-only vs DANN vs MMD, as a linear
probe (frozen backbone) and as full fine-tuning; target accuracy mean ± std over seeds.

Each run is the shipped recipe (``recipes/image_classification/{finetune,dann,mmd}.yaml``; the linear probe adds
``freeze_backbone: true`` and the probe's learning rate) with one reduced budget for all, set on the command line:
``--max_steps`` optimizer steps of ``--batch_size`` labelled source digits (plus as many unlabelled target digits for
DANN / MMD), images upsampled from 16x16 to ``--image_size``. Target accuracy is measured on ``--max_eval_samples``
labelled target digits (the target's labels are never used in training; the usual transductive protocol of this
benchmark). Data: ../shared/data/digits/mnist_usps_16x16.npz (2,000 MNIST, 1,800 USPS digits).

Each finished run is appended to ``<workdir>/runs.jsonl``; a rerun skips the runs already there.

    nice -n 15 python benchmarks/digits.py --output benchmarks/results/digits.md      # the documented reduced budget
    python benchmarks/digits.py --directions mnist:usps --regimes full --seeds 1 2 3 --max_steps 300 --image_size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
DIGITS = REPO.parent / "shared" / "data" / "digits" / "mnist_usps_16x16.npz"
RECIPES = REPO / "recipes" / "image_classification"
METHODS = ("finetune", "dann", "mmd")
REGIMES = ("probe", "full")
# Published figures (../shared/data/README.md), for orientation only: LeNet-class networks trained from scratch on
# the same 2,000 / 1,800 digit subsets, full training budgets.
REFERENCES = [
    ("source only, LeNet-class network (MNIST→USPS)", "about 75"),
    ("ADDA (Tzeng et al. CVPR 2017), MNIST→USPS", "89.4"),
]


def run_one(direction: str, regime: str, method: str, seed: int, args, workdir: Path) -> dict:
    import hf_transfer

    source, target = direction.split(":")
    overrides = {
        "source_data": str(DIGITS), "source_config": source,
        "target_data": str(DIGITS), "target_config": target,
        "image_size": args.image_size, "max_steps": args.max_steps, "warmup_steps": max(1, args.max_steps // 10),
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": 128,
        "max_eval_samples": args.max_eval_samples, "seed": seed, "logging_steps": max(1, args.max_steps // 4),
        "selection_validators": ["none"], "eval_strategy": "no", "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "use_cpu": True,
        "output_dir": str(workdir / f"{direction.replace(':', '2')}-{regime}-{method}-{seed}"),
    }
    if regime == "probe":
        # The seed's head: pooled features -> hidden layer -> classes. The hidden layer is also what DANN / MMD can
        # align when the backbone is frozen (the pooled features themselves cannot move).
        overrides.update(freeze_backbone=True, learning_rate=args.probe_lr,
                         classifier_hidden_size=args.probe_hidden_size)
    else:
        overrides.update(learning_rate=args.full_lr)
    start = time.time()
    result = hf_transfer.train(str(RECIPES / f"{method}.yaml"), **overrides)
    m = result.metrics
    shutil.rmtree(overrides["output_dir"], ignore_errors=True)  # only the metrics are kept (runs.jsonl)
    return {"direction": direction, "regime": regime, "method": method, "seed": seed,
            "target_accuracy": m["target_accuracy"], "source_accuracy": m.get("source_accuracy"),
            "train_runtime": m["train_runtime"], "wall_s": time.time() - start,
            "budget": budget_of(args, regime)}


def budget_of(args, regime: str) -> dict:
    """What makes two runs comparable; a rerun reuses only runs with the same budget."""
    budget = {"image_size": args.image_size, "max_steps": args.max_steps,
              "per_device_train_batch_size": args.batch_size, "max_eval_samples": args.max_eval_samples}
    if regime == "probe":
        budget.update(learning_rate=args.probe_lr, classifier_hidden_size=args.probe_hidden_size)
    else:
        budget.update(learning_rate=args.full_lr)
    return budget


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    pct = [100 * v for v in values]
    spread = f" ± {statistics.stdev(pct):.1f}" if len(pct) > 1 else ""
    return f"{statistics.mean(pct):.1f}{spread} (n={len(pct)})"


def report(runs: list[dict], args) -> str:
    from _machine import machine_header

    lines = ["# Digits: MNIST ↔ USPS with EfficientNet-Lite0", "", machine_header(), "",
             f"Reduced CPU budget (2 shared cores): {args.max_steps} steps of {args.batch_size} source digits "
             f"(+ {args.batch_size} target digits for DANN/MMD), 16×16 digits upsampled to {args.image_size} px, "
             f"learning rate {args.probe_lr} (probe, head with a {args.probe_hidden_size}-unit hidden layer) / "
             f"{args.full_lr} (full), target accuracy on "
             f"{args.max_eval_samples} labelled target digits. The recipes' own budget is 300 steps of 32 at 64 px.",
             "", "Target accuracy, % (mean ± std over seeds):", "",
             "| direction | regime | source only | DANN | MMD |", "|---|---|---|---|---|"]
    for direction in args.directions:
        for regime in args.regimes:
            cells = []
            for method in METHODS:
                accs = [r["target_accuracy"] for r in runs
                        if (r["direction"], r["regime"], r["method"]) == (direction, regime, method)]
                cells.append(mean_std(accs))
            arrow = direction.replace(":", "→").replace("mnist", "MNIST").replace("usps", "USPS")
            lines.append(f"| {arrow} | {'linear probe' if regime == 'probe' else 'full fine-tuning'} | "
                         + " | ".join(cells) + " |")
    wall = sum(r["wall_s"] for r in runs)
    lines += ["", f"{len(runs)} runs, {wall / 60:.1f} min of wall time in all "
              f"(mean {wall / max(len(runs), 1):.0f} s a run, model loading and evaluation included).", "",
              "Published references (other networks, full training budgets; for orientation, not a like-for-like "
              "comparison):", ""]
    lines += [f"- {name}: {value}%" for name, value in REFERENCES]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--directions", nargs="+", default=["mnist:usps", "usps:mnist"])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--max_steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--probe_lr", type=float, default=3e-3)
    parser.add_argument("--full_lr", type=float, default=1e-3)
    parser.add_argument("--probe_hidden_size", type=int, default=256)
    parser.add_argument("--max_eval_samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 on a shared, oversubscribed CPU (more threads only wait on each other)")
    parser.add_argument("--workdir", default=str(REPO / "outputs" / "bench_digits"))
    parser.add_argument("--output", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    key = lambda r: (r["direction"], r["regime"], r["method"], r["seed"], json.dumps(r["budget"], sort_keys=True))  # noqa: E731
    seen = {key(r) for r in done}
    for direction in args.directions:
        for regime in args.regimes:
            for method in args.methods:
                for seed in args.seeds:
                    budget = budget_of(args, regime)
                    if (direction, regime, method, seed, json.dumps(budget, sort_keys=True)) in seen:
                        continue
                    run = run_one(direction, regime, method, seed, args, workdir)
                    print(f"digits: {direction} {regime} {method} seed {seed}: target accuracy "
                          f"{run['target_accuracy']:.4f} ({run['wall_s']:.0f} s)", flush=True)
                    with open(log, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(run) + "\n")
                    done.append(run)
    runs = [r for r in done if r["regime"] in args.regimes and r["budget"] == budget_of(args, r["regime"])
            and r["direction"] in args.directions and r["seed"] in args.seeds]
    text = report(runs, args)
    print(text)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
