"""FDU-MTL review domains learned in sequence: naive sequential fine-tuning vs a LoRA adapter per task vs EWC vs
L2-SP vs replay; average accuracy and forgetting after the last domain, and the accuracy matrix of each method.

Each method is one ``hf_transfer.lifelong.train_lifelong`` run over the same ``--domains`` in the same order, with
``--steps`` optimizer steps of ``--batch_size`` rows per domain; accuracy is measured on ``--max_eval`` rows of each
seen domain's ``<domain>.test.jsonl`` after every domain. One head is shared by all domains (the domain-incremental
setting), except with ``adapter`` (a head and LoRA adapter per domain, chosen by the known domain at test time).

    nice -n 15 .venv/bin/python benchmarks/lifelong.py --steps 40 --max_eval 64 --ewc_lambda 1e5 --l2sp_alpha 0.01 \
        --adapter_lr 3e-3 --replay_size 32     # the 8 domains, BENCHMARKS.md's budget: ~30 min on 2 busy cores
    nice -n 15 .venv/bin/python benchmarks/lifelong.py --domains books dvd --steps 2 --methods naive --out /tmp/l.md

Writes ``--out`` (default benchmarks/results/lifelong.md) with the command, machine and date, the matrices as JSON
beside it, and one PNG per method (``lifelong_<method>.png``). Runs offline with the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
ALL_DOMAINS = ["books", "dvd", "electronics", "kitchen_housewares", "apparel", "camera_photo",
               "health_personal_care", "music"]
METHODS = ("naive", "adapter", "ewc", "l2sp", "replay")


def recipe(args, method: str, out: Path) -> dict:
    r = {
        "model_name_or_path": MODEL, "lifelong_method": method, "steps_per_task": args.steps,
        "max_length": args.max_length, "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": 64, "learning_rate": args.lr, "warmup_steps": 0, "weight_decay": 0.0,
        "seed": args.seed, "output_dir": str(out), "use_cpu": True, "report_to": "none", "disable_tqdm": True,
        "logging_steps": args.steps,
        "tasks": [{"name": d, "data": str(DATA / f"{d}.train.jsonl"), "eval_data": str(DATA / f"{d}.test.jsonl"),
                   "max_train_samples": args.train_rows, "max_eval_samples": args.max_eval} for d in args.domains],
        "ewc_lambda": args.ewc_lambda, "fisher_samples": args.fisher_samples, "l2sp_alpha": args.l2sp_alpha,
        "replay_size": args.replay_size,
    }
    if method == "adapter":
        r["learning_rate"] = args.adapter_lr
        r["peft"] = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                     "target_modules": ["query", "value"]}
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=ALL_DOMAINS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per domain")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--adapter_lr", type=float, default=2e-3)
    parser.add_argument("--train_rows", type=int, default=200)
    parser.add_argument("--max_eval", type=int, default=48, help="test rows per domain")
    parser.add_argument("--ewc_lambda", type=float, default=1e4)
    parser.add_argument("--fisher_samples", type=int, default=8)
    parser.add_argument("--l2sp_alpha", type=float, default=1.0)
    parser.add_argument("--replay_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, busy CPU, more threads mostly wait on each other)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lifelong.md"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from _machine import machine_header, markdown_table

    from hf_transfer.lifelong import train_lifelong

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, start_all = {}, time.time()
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            result = train_lifelong(recipe(args, method, Path(tmp) / method))
            shutil.copy(Path(tmp) / method / "accuracy_matrix.png", out.parent / f"{out.stem}_{method}.png")
        m = result.metrics
        results[method] = {"average_accuracy": m["average_accuracy"], "forgetting": m["forgetting"],
                           "backward_transfer": m["backward_transfer"],
                           "average_accuracy_per_step": m["average_accuracy_per_step"],
                           "forgetting_per_step": m["forgetting_per_step"],
                           "matrix": [[None if v != v else v for v in row] for row in result.matrix.tolist()],
                           "wall_time_s": time.time() - start}
        print(f"{method:8s} A={m['average_accuracy']:.4f} F={m['forgetting']:.4f} "
              f"BWT={m['backward_transfer']:.4f} ({time.time() - start:.0f} s)", flush=True)
    total = time.time() - start_all

    rows = [[name, f"{r['average_accuracy']:.3f}", f"{r['forgetting']:.3f}", f"{r['backward_transfer']:+.3f}",
             " → ".join(f"{a:.3f}" for a in r["average_accuracy_per_step"]), f"{r['wall_time_s']:.0f}"]
            for name, r in results.items()]
    matrices = []
    for name, r in results.items():
        header = ["after ↓ / on →", *args.domains]
        body = [[args.domains[i], *["" if v is None else f"{v:.3f}" for v in row]]
                for i, row in enumerate(r["matrix"])]
        matrices += [f"**{name}** (`{out.stem}_{name}.png`)", "", markdown_table(header, body), ""]
    budget = (f"{len(args.domains)} domains, {args.steps} steps × {args.batch_size} rows per domain (from "
              f"{args.train_rows} rows), lr {args.lr} (adapter {args.adapter_lr}), {args.max_eval} test rows per "
              f"domain, max_length {args.max_length}; ewc_lambda {args.ewc_lambda:g} on {args.fisher_samples} rows; "
              f"l2sp_alpha {args.l2sp_alpha:g}; replay buffer {args.replay_size} rows")
    text = "\n".join([
        "# Lifelong learning over FDU-MTL domains in sequence",
        "",
        machine_header({"model": MODEL, "order": " → ".join(args.domains),
                        "budget (reduced for a shared 2-core CPU)": budget, "wall time": f"{total:.0f} s"}),
        "",
        "A: average accuracy over the domains seen, after the last one; F: forgetting (mean drop of each earlier "
        "domain from its best accuracy since it was learned); BWT: backward transfer.",
        "",
        markdown_table(["method", "A (final)", "F (final)", "BWT", "A after each domain", "wall s"], rows),
        "",
        "## Accuracy matrices (row: after training on that domain; column: evaluated on)",
        "",
        *matrices,
    ])
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results, "wall_time_s": total},
                                                   indent=1), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
