"""What hf-transfer costs over a plain ``transformers.Trainer``, and what dynamic padding saves.

1. Time per training step: ``hf_transfer.train`` (method ``finetune``) vs a plain ``Trainer`` with
   ``DataCollatorWithPadding`` on the same model (the packaged all-MiniLM-L6-v2), the same tokenised rows, the
   same batch size, sampler and seed, so both see identical batches. The two alternate, ``--repeats`` times each,
   in one process; the figure is the median over repeats of ``train_runtime / steps``.
2. Padding: on the real Amazon review lengths (all four domains, MiniLM tokenizer, ``--max_length``), the share of
   tokens in a batch that are padding when padding to ``max_length``, when padding each random batch to its
   longest row (dynamic padding), and with length-grouped batches (``train_sampling_strategy=group_by_length``).

    python benchmarks/overhead.py                      # defaults: 30 steps x 3 repeats, batch 16, max_length 128
    python benchmarks/overhead.py --steps 50 --repeats 5 --output benchmarks/results/overhead.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import hf_transfer  # noqa: E402
from hf_transfer.backbones import load_tokenizer, resolve_model_path  # noqa: E402
from hf_transfer.data import load_raw_data, prepare_data  # noqa: E402
from hf_transfer.recipe import DEFAULT_MODEL, load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _machine import cpu_model  # noqa: E402

AMAZON = REPO.parent / "shared" / "data" / "amazon"


class StepTimer(TrainerCallback):
    """Wall and CPU (process) seconds of every optimizer step. CPU time barely moves when other jobs share the
    machine; the median over steps shrugs off the odd slow step."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)

    def medians(self, skip: int = 3) -> tuple[float, float]:
        return statistics.median(self.wall[skip:]), statistics.median(self.cpu[skip:])


def common_fields(args, output_dir: str) -> dict:
    return {
        "output_dir": output_dir,
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 5e-5,
        "save_strategy": "no",
        "logging_steps": 10_000,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 42,
        "use_cpu": True,
        "dataloader_pin_memory": False,
    }


def run_plain(args, workdir: Path) -> tuple[float, float]:
    """A plain Trainer on exactly the rows hf-transfer trains on (same tokenisation and hold-out split)."""
    recipe = load_recipe({"source_data": args.source, "target_data": None, "max_length": args.max_length})
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    raw = load_raw_data(recipe.data)
    data = prepare_data(raw, tokenizer, recipe.data, seed=42)
    train = data.train.remove_columns(["length"])
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(DEFAULT_MODEL), num_labels=2)
    training_args = TrainingArguments(**common_fields(args, str(workdir / "plain")))
    timer = StepTimer()
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[timer],
    )
    trainer.train()
    return timer.medians()


def run_hf_transfer(args, workdir: Path) -> tuple[float, float]:
    fields = common_fields(args, str(workdir / "hf_transfer"))
    timer = StepTimer()
    hf_transfer.train(
        {**fields, "source_data": args.source, "target_data": None, "max_length": args.max_length}, callbacks=[timer]
    )
    return timer.medians()


def padding_shares(max_length: int, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Share of padding tokens per scheme over one epoch of the four Amazon domains."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    texts = []
    for domain in ("books", "dvd", "electronics", "kitchen"):
        with open(AMAZON / f"{domain}.jsonl", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for line in handle]
    lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])
    real = lengths.sum()

    def share(order: np.ndarray) -> float:
        padded = sum(
            lengths[order[i : i + batch_size]].max() * len(order[i : i + batch_size])
            for i in range(0, len(order), batch_size)
        )
        return float(1 - real / padded)

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    grouped = np.array(list(LengthGroupedSampler(batch_size, lengths=lengths.tolist())))
    return {
        "rows": int(len(lengths)),
        "mean_tokens": float(lengths.mean()),
        "pad_to_max_length": float(1 - real / (len(lengths) * max_length)),
        "dynamic": share(rng.permutation(len(lengths))),
        "dynamic_group_by_length": share(grouped),
    }


def machine() -> str:
    return f"{os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--source", default=str(REPO / "hf_transfer/resources/amazon_books_demo.jsonl"))
    parser.add_argument("--workdir", default="/tmp/hf_transfer_overhead")
    parser.add_argument("--padding_max_lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--output", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    workdir = Path(args.workdir)

    results: dict[str, list[tuple[float, float]]] = {"plain": [], "hf": []}
    for repeat in range(args.repeats):
        # Alternate the order so drift in machine load falls on both sides.
        runs = [("plain", run_plain), ("hf", run_hf_transfer)]
        for name, fn in runs if repeat % 2 == 0 else runs[::-1]:
            wall, cpu = fn(args, workdir)
            results[name].append((wall, cpu))
            print(f"repeat {repeat}: {name} wall {wall:.4f} cpu {cpu:.4f} s/step", file=sys.stderr, flush=True)

    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[name])

    def each(name: str, i: int) -> str:
        return ", ".join(f"{r[i]:.3f}" for r in results[name])

    pads = [padding_shares(n, args.batch_size) for n in args.padding_max_lengths] if AMAZON.is_dir() else []

    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    lines = [
        f"Command: `{command.strip()}` — {time.strftime('%Y-%m-%d')}, commit {commit.stdout.strip() or '?'}",
        f"Machine: {machine()}",
        "",
        "| trainer | wall s/step | CPU s/step | wall ratio | CPU ratio | wall, each repeat | CPU, each repeat |",
        "|---|---|---|---|---|---|---|",
        f"| transformers.Trainer (baseline) | {med('plain', 0):.4f} | {med('plain', 1):.4f} | 1.000 | 1.000 "
        f"| {each('plain', 0)} | {each('plain', 1)} |",
        f"| hf-transfer train | {med('hf', 0):.4f} | {med('hf', 1):.4f} | {med('hf', 0) / med('plain', 0):.3f} "
        f"| {med('hf', 1) / med('plain', 1):.3f} | {each('hf', 0)} | {each('hf', 1)} |",
        "",
        f"Each repeat is the median over steps 4..{args.steps} of one run; the table gives the median over "
        f"{args.repeats} repeats. Batch {args.batch_size}, max_length {args.max_length}, all-MiniLM-L6-v2, the same "
        "rows and sampler seed on both sides. CPU time is the process's (all threads): the steadier figure when "
        "other jobs share the machine.",
    ]
    if pads:
        lines += [
            "",
            f"Padding on the real Amazon review lengths ({pads[0]['rows']:,} reviews of the 4 domains, MiniLM "
            f"tokenizer, batch {args.batch_size}): the share of batch tokens that are padding, one epoch.",
            "",
            "| max_length | mean tokens | pad to max_length (baseline) | dynamic, random batches | "
            "dynamic + group_by_length | padded tokens saved vs baseline |",
            "|---|---|---|---|---|---|",
        ]
        for n, pad in zip(args.padding_max_lengths, pads):
            # tokens computed = real / (1 - pad share); saved = 1 - computed_grouped / computed_baseline
            saved = 1 - (1 - pad["pad_to_max_length"]) / (1 - pad["dynamic_group_by_length"])
            lines.append(
                f"| {n} | {pad['mean_tokens']:.0f} | {pad['pad_to_max_length']:.3f} | {pad['dynamic']:.3f} | "
                f"{pad['dynamic_group_by_length']:.3f} | {saved:.1%} of the tokens computed |"
            )
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
