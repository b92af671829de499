"""Peak memory and time of a short training run as the data grows 10x, with ``streaming: true`` and without.

The Amazon books (source) and kitchen (target) reviews of ``../shared/data/amazon`` (2,000 rows each), shuffled once
(seeded, so the head of a file holds both classes) and replicated to ``--rows`` rows per side (1x) and to 10x that,
are written as JSON Lines. Each configuration then trains in a fresh child process: the same short DANN run (source
and target paired at every step) on a tiny random BERT (2 layers, 32 wide, the MiniLM tokenizer; so that data, not
weights, dominates memory), one torch thread, ``max_steps`` steps, evaluation capped to ``max_eval_samples`` rows
and no held-out source slice (its size would grow with the data in the table path and only measure evaluation).

Measured per child: peak resident memory (``ru_maxrss`` of that child, from ``os.wait4``;
``getrusage(RUSAGE_CHILDREN)`` would report the largest child so far, not this one), wall time of the whole child
(loading, tokenising, training, evaluation, export), the Trainer's ``train_runtime``, and the size of the ``datasets``
cache the child wrote (each child gets its own empty cache folder: the table path converts the files to Arrow and
caches the tokenised tables there; a stream writes nothing).

    nice -n 10 python benchmarks/streaming_memory.py                       # 20,000 and 200,000 rows per side
    nice -n 10 python benchmarks/streaming_memory.py --rows 2000 --steps 10 --output /tmp/smoke.md   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AMAZON = REPO.parent / "shared" / "data" / "amazon"
RESULTS = REPO / "benchmarks" / "results" / "streaming_memory.md"

# Threads and offline mode for every child, fixed before torch is imported there.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_TRANSFER_TSNE_PLOT": "0",
}


def write_replicated(src: Path, dest: Path, rows: int, seed: int) -> int:
    """``rows`` rows cycling through ``src``'s rows in a seeded order; returns the file's size in bytes."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    with open(dest, "w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(lines[i % len(lines)] + "\n")
    return dest.stat().st_size


def tiny_model(folder: Path) -> str:
    """A 2-layer, 32-wide BERT with random weights and the packaged MiniLM tokenizer (what the tests use)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_transfer.backbones import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def child(recipe: dict) -> None:
    """Run in the child process: train and print the metrics as one JSON line. An empty recipe only imports what a
    run imports: the baseline every row's peak RSS includes."""
    import torch

    torch.set_num_threads(1)
    import hf_transfer
    import hf_transfer.run  # noqa: F401  (the trainer, methods and data modules a run loads)

    result = hf_transfer.train(recipe) if recipe else None
    print("METRICS " + json.dumps(result.metrics if result else {}, default=float), flush=True)


def run_child(recipe: dict, cache: Path, log: Path) -> dict:
    """Train ``recipe`` in a fresh process; its peak RSS (MiB), wall seconds, metrics and cache size (MiB)."""
    env = {**os.environ, **CHILD_ENV, "HF_DATASETS_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(recipe)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        # wait4 reaps this child and returns its own rusage (RUSAGE_CHILDREN would be the maximum over every child
        # so far); output goes to a file, so the child never blocks on a full pipe while we wait.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{text[-4000:]}")
    metrics = json.loads(next(line for line in text.splitlines() if line.startswith("METRICS "))[8:])
    cache_bytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    return {"rss_mib": usage.ru_maxrss / 1024, "wall_s": wall, "metrics": metrics, "cache_mib": cache_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per side at 1x (10x is ten times that)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    sys.path.insert(0, str(REPO / "benchmarks"))
    from _machine import machine_header, markdown_table

    work = Path(tempfile.mkdtemp(prefix="streaming_memory_"))
    try:
        baseline = run_child({}, work / "cache" / "baseline", work / "baseline.log")["rss_mib"]
        print(f"imports only: peak RSS {baseline:.0f} MiB", flush=True)
        model = tiny_model(work / "tiny-bert")
        rows_out = []
        for scale in (1, 10):
            n = args.rows * scale
            source, target = work / f"books_{n}.jsonl", work / f"kitchen_{n}.jsonl"
            size = write_replicated(AMAZON / "books.jsonl", source, n, seed=0)
            size += write_replicated(AMAZON / "kitchen.jsonl", target, n, seed=1)
            for stream in (False, True):
                name = f"{'stream' if stream else 'table'}_{n}"
                recipe = {
                    "model_name_or_path": model,
                    "source_data": str(source),
                    "target_data": str(target),
                    "method": ["dann"],
                    "max_length": args.max_length,
                    "max_steps": args.steps,
                    "per_device_train_batch_size": args.batch_size,
                    "per_device_eval_batch_size": 64,
                    "learning_rate": 1e-3,
                    "source_eval_fraction": 0.0,
                    "max_eval_samples": 500,
                    "save_strategy": "no",
                    "logging_steps": args.steps,
                    "report_to": "none",
                    "disable_tqdm": True,
                    "use_cpu": True,
                    "dataloader_pin_memory": False,
                    "output_dir": str(work / "out" / name),
                    "streaming": stream,
                }
                print(f"{name}: training ...", flush=True)
                m = run_child(recipe, work / "cache" / name, work / f"{name}.log")
                print(
                    f"{name}: peak RSS {m['rss_mib']:.0f} MiB, wall {m['wall_s']:.1f} s, "
                    f"cache {m['cache_mib']:.1f} MiB",
                    flush=True,
                )
                rows_out.append(
                    [
                        f"{n:,}",
                        f"{size / 2**20:.0f}",
                        "streaming" if stream else "table (default)",
                        f"{m['rss_mib']:.0f}",
                        f"{m['wall_s']:.1f}",
                        f"{m['metrics']['train_runtime']:.1f}",
                        f"{m['cache_mib']:.1f}",
                        f"{m['metrics']['target_accuracy']:.3f}",
                    ]
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = markdown_table(
        [
            "rows per side",
            "data (MiB, both files)",
            "path",
            "peak RSS (MiB)",
            "wall (s)",
            "train_runtime (s)",
            "datasets cache written (MiB)",
            "target_accuracy",
        ],
        rows_out,
        align="rrlrrrrr",
    )
    import datasets
    import torch
    import transformers

    header = machine_header(
        {
            "libraries": f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"datasets {datasets.__version__}",
            "torch threads": "1 (OMP_NUM_THREADS=1, torch.set_num_threads(1))",
            "run": f"DANN, {args.steps} steps x {args.batch_size} rows, max_length "
            f"{args.max_length}, tiny random BERT (2 x 32), one fresh process per row",
        }
    )
    notes = (
        f"Peak RSS is the child's `ru_maxrss`. A child that only imports what a run imports (torch, "
        f"transformers, datasets, hf_transfer) peaks at {baseline:.0f} MiB, whatever the data. The table path "
        "converts both files to Arrow and caches the tokenised tables (the cache column) before the first "
        "step; the streaming path reads its 2,000-row "
        "samples, then only the rows training consumes plus its shuffle buffers (10,000 raw rows per side), "
        "and tokenises only the rows it trains on."
    )
    text = f"# Streaming: memory as the data grows 10x\n\n{header}\n\n{table}\n\n{notes}\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
