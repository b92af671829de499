"""Spoken digits across speakers (FSDD), leave one speaker out, with Whisper tiny.en's encoder (converted from the
packaged CTranslate2 weights): a plain ``transformers.Trainer`` fine-tune as the baseline, then the linear probe,
fine-tuning, LoRA, DANN and MMD; target accuracy on the held-out speaker with a 95% bootstrap interval.

Conditions (``--methods``; all by default):

* ``trainer``: ``transformers.Trainer`` on the same model (tiny.en encoder shortened to the same window, new 10-class
  head), the same clips and features, optimiser, schedule and budget as ``finetune``; no hf_transfer in the loop;
* ``probe``, ``finetune``, ``lora``, ``dann``, ``mmd``: ``recipes/audio_classification/<recipe>.yaml``; DANN and MMD
  read the held-out speaker's clips without labels.

For each held-out speaker (``--speakers``; all four by default) the source is the other three speakers' 1,500
labelled clips (``--max_source_samples`` to cut), and accuracy is measured on the held-out speaker's 500 clips
(``--max_eval_samples`` to cut): the transductive protocol (the target's labels are never used in training). Every
condition runs with one budget set on the command line: ``--steps`` optimizer steps of ``--batch_size`` source clips.
The interval is a percentile bootstrap over the evaluated clips (1,000 resamples); with several ``--seeds`` each run
has its own. Finished runs are appended to ``<workdir>/runs.jsonl``; a rerun skips them. Results: ``--json`` (every run
and the summary) and the markdown table (``--output``).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fsdd.py --steps 10 --speakers nicolas --methods trainer probe \
        --max_source_samples 160 --max_eval_samples 50                              # a quick look
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fsdd.py --json benchmarks/results/fsdd.json \
        --output benchmarks/results/fsdd.md                                          # the full protocol
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import RunLog, add_grid_options, prepare_grid  # noqa: E402

FSDD = REPO.parent / "shared" / "data" / "fsdd"
RECIPES = REPO / "recipes" / "audio_classification"
MODEL = "openai/whisper-tiny.en"
SPEAKERS = ["george", "jackson", "lucas", "nicolas"]
#: name -> recipe file; ``trainer`` is the plain transformers.Trainer baseline (on finetune.yaml's settings)
CONDITIONS = {"trainer": "finetune", "probe": "linear_probe", "finetune": "finetune", "lora": "lora", "dann": "dann",
              "mmd": "mmd"}


def common_overrides(args, seed: int, speaker: str, tables: Path, output_dir: Path) -> dict:
    """The budget and data every condition shares (the plain-Trainer baseline reads the same values)."""
    overrides = {
        "source_data": str(tables / f"without_{speaker}.csv"), "eval_data": str(tables / f"{speaker}.csv"),
        "max_audio_seconds": args.window, "max_steps": args.steps, "warmup_steps": max(1, args.steps // 15),
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": 64, "seed": seed,
        "logging_steps": max(1, args.steps // 4), "selection_validators": ["none"], "eval_strategy": "no",
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "use_cpu": not args.gpu,
        "learning_rate": args.lr, "output_dir": str(output_dir), "source_eval_fraction": 0.0,
    }
    if args.max_source_samples:
        overrides["max_source_samples"] = args.max_source_samples
    if args.max_eval_samples:
        overrides["max_eval_samples"] = args.max_eval_samples
    return overrides


def scored(correct, seed: int) -> dict:
    """Accuracy and its 95% percentile-bootstrap interval over the evaluated clips."""
    import numpy as np

    from hf_transfer.metrics import bootstrap_intervals

    correct = np.asarray(correct, dtype=np.float64)
    low, high = bootstrap_intervals(len(correct), lambda idx: {"accuracy": correct[idx].mean(axis=1)},
                                    seed=seed)["accuracy"]
    return {"target_accuracy": float(correct.mean()), "ci_low": low, "ci_high": high, "num_eval": len(correct)}


def run_recipe(condition: str, speaker: str, seed: int, args, tables: Path, output_dir: Path) -> dict:
    import numpy as np

    import hf_transfer

    overrides = common_overrides(args, seed, speaker, tables, output_dir)
    if condition == "probe":
        overrides["learning_rate"] = args.probe_lr
    elif condition == "lora":
        overrides["learning_rate"] = args.lora_lr
    if condition in ("dann", "mmd"):
        overrides["target_data"] = str(tables / f"{speaker}.csv")  # read without labels
        if args.max_eval_samples:
            overrides["max_target_samples"] = args.max_eval_samples
    result = hf_transfer.train(str(RECIPES / f"{CONDITIONS[condition]}.yaml"), **overrides)
    trainer = result.trainer
    output = trainer.predict(trainer.eval_dataset["target"])
    correct = np.argmax(output.predictions, axis=-1) == output.label_ids
    assert abs(correct.mean() - result.metrics["target_accuracy"]) < 1e-6
    return scored(correct, seed)


def run_plain_trainer(speaker: str, seed: int, args, tables: Path, output_dir: Path) -> dict:
    """``finetune`` without hf_transfer's trainer: transformers.Trainer on the labelled source clips, with the same
    model (the task's loader: tiny.en, window, new head), clips, features and optimiser settings."""
    import types

    import numpy as np
    from transformers import Trainer, TrainingArguments, set_seed

    from hf_transfer.audio.data import AudioCollator
    from hf_transfer.data import infer_label_space
    from hf_transfer.recipe import DataArguments
    from hf_transfer.tasks import get_task

    o = common_overrides(args, seed, speaker, tables, output_dir)
    set_seed(seed)
    task = get_task("audio-classification")
    d = DataArguments(task="audio-classification", source_data=o["source_data"], target_data=None,
                      max_audio_seconds=args.window)
    source = task.read_table(o["source_data"], d, field="source_data").shuffle(seed=seed)
    if args.max_source_samples:
        source = source.select(range(min(len(source), args.max_source_samples)))
    test = task.read_table(o["eval_data"], d, field="eval_data")
    if args.max_eval_samples:
        test = test.shuffle(seed=seed).select(range(min(len(test), args.max_eval_samples)))
    space = infer_label_space(source, "label", num_labels=None, field="source_data", spec=o["source_data"])
    source = task.encode_labels(source, d, space, field="source_data", spec=o["source_data"])
    test = task.encode_labels(test, d, space, field="eval_data", spec=o["eval_data"])
    model_args = types.SimpleNamespace(model_name_or_path=MODEL, revision=None, trust_remote_code=False,
                                       classifier_hidden_size=None)
    processor = task.load_processor(model_args, d)
    model = task.build_model(model_args, d, space)
    train_rows, test_rows = task.process(source, processor, d), task.process(test, processor, d)
    training_args = TrainingArguments(
        output_dir=str(output_dir), max_steps=o["max_steps"], seed=seed,
        per_device_train_batch_size=o["per_device_train_batch_size"], per_device_eval_batch_size=64,
        learning_rate=o["learning_rate"], weight_decay=0.01, warmup_steps=o["warmup_steps"],
        lr_scheduler_type="linear", logging_steps=o["logging_steps"], save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=o["use_cpu"], remove_unused_columns=False, dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_rows,
                      data_collator=AudioCollator(["input_features"]))
    trainer.train()
    output = trainer.predict(test_rows)
    return scored(np.argmax(output.predictions, axis=-1) == output.label_ids, seed)


def budget_of(args) -> dict:
    """What makes two runs comparable; a rerun reuses only runs with the same budget."""
    return {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "probe_lr": args.probe_lr,
            "lora_lr": args.lora_lr, "window": args.window, "max_source_samples": args.max_source_samples,
            "max_eval_samples": args.max_eval_samples}


def cell(runs: list[dict]) -> str:
    if not runs:
        return "–"
    if len(runs) == 1:
        r = runs[0]
        return f"{100 * r['target_accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
    accs = [100 * r["target_accuracy"] for r in runs]
    return f"{sum(accs) / len(accs):.1f} ({', '.join(f'{a:.1f}' for a in accs)})"


def report(runs: list[dict], args) -> str:
    from _machine import machine_header

    device = "GPU" if args.gpu else "CPU"
    lines = ["# FSDD: spoken digits, leave one speaker out, Whisper tiny.en encoder", "", machine_header(), "",
             f"Budget ({device}): {args.steps} steps of {args.batch_size} source clips (+ as many unlabelled clips "
             f"of the held-out speaker for DANN/MMD), a {args.window} s window, learning rate {args.lr} (probe "
             f"{args.probe_lr}, LoRA {args.lora_lr}); source {args.max_source_samples or 'all 1,500'} clips of the "
             f"other three speakers; accuracy on {args.max_eval_samples or 'all 500'} clips of the held-out speaker.",
             "", "Held-out speaker accuracy, %: one seed [95% bootstrap interval over clips]; several seeds: mean "
             "(each seed):", "",
             "| condition | " + " | ".join(args.speakers) + " | mean |", "|---|" + "---:|" * (len(args.speakers) + 1)]
    for condition in args.methods:
        cells = [cell([r for r in runs if (r["speaker"], r["condition"]) == (s, condition)]) for s in args.speakers]
        accs = [r["target_accuracy"] for r in runs if r["condition"] == condition]
        mean = f"{100 * sum(accs) / len(accs):.1f}" if accs else "–"
        name = "plain transformers Trainer (baseline)" if condition == "trainer" else condition
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    wall = sum(r["wall_s"] for r in runs)
    lines += ["", f"{len(runs)} runs, {wall / 60:.1f} min of wall time in all "
              f"(mean {wall / max(len(runs), 1):.0f} s a run, feature extraction and evaluation included)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", nargs="+", default=SPEAKERS, choices=SPEAKERS, help="held-out speakers")
    parser.add_argument("--methods", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--probe_lr", type=float, default=3e-3)
    parser.add_argument("--lora_lr", type=float, default=1e-3)
    parser.add_argument("--window", type=int, default=1, help="max_audio_seconds")
    parser.add_argument("--max_source_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    add_grid_options(parser, REPO / "outputs" / "bench_fsdd")
    args = parser.parse_args(argv)

    from hf_transfer.audio.fsdd import write_fsdd_tables

    workdir = prepare_grid(args)
    tables = workdir / "tables"
    write_fsdd_tables(FSDD, tables)
    budget = budget_of(args)
    log = RunLog(workdir, budget, keys=("speaker", "condition", "seed"))
    for speaker in args.speakers:
        for condition in args.methods:
            for seed in args.seeds:
                run = log.run(
                    {"speaker": speaker, "condition": condition, "seed": seed},
                    workdir / f"{speaker}-{condition}-{seed}",
                    lambda out, sp=speaker, c=condition, s=seed: (
                        run_plain_trainer(sp, s, args, tables, out) if c == "trainer"
                        else run_recipe(c, sp, s, args, tables, out)))
                if run is None:
                    continue
                print(f"fsdd: held out {speaker}, {condition}, seed {seed}: accuracy {run['target_accuracy']:.4f} "
                      f"[{run['ci_low']:.3f}, {run['ci_high']:.3f}] ({run['wall_s']:.0f} s)", flush=True)
    runs = log.select(speaker=args.speakers, condition=args.methods, seed=args.seeds)
    summary = {c: sum(accs) / len(accs) for c in args.methods
               if (accs := [r["target_accuracy"] for r in runs if r["condition"] == c])}
    log.report(args, report(runs, args), runs, summary)


if __name__ == "__main__":
    main()
