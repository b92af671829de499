"""Frozen-prefix caching against the plain ``transformers.Trainer`` (the ``--frozen_cache`` section of
``throughput.py``; issue 23, item 1).

For each freezing plan (``probe``: ``freeze_backbone``; ``top2``: ``trainable_layers: 2``), three runs on the same
rows for the same number of epochs, in one process one after another:

* ``plain``: ``transformers.Trainer`` on the same model with the same parameters frozen, running the whole network
  every step (``DataCollatorWithPadding``);
* ``hf-transfer, cache off``: ``hf_transfer.train`` with ``cache_frozen: false``;
* ``hf-transfer, cache on``: ``hf_transfer.train`` with ``cache_frozen: true``; its time includes filling the cache.

Rows/s = training rows x epochs / (training time [+ the cache's set-up: its output check and the training rows'
share of the fill]). Accuracy: on the labelled evaluation rows (the
kitchen reviews) at the end. Differences in accuracy between the plain Trainer and the cache come from dropout: the
plain Trainer runs the frozen layers' dropout, the cache computes them in inference mode.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

PLANS = {"probe": {"freeze_backbone": True}, "top2": {"trainable_layers": 2}}
LEARNING_RATES = {"probe": 1e-3, "top2": 1e-4}


def _fields(args, output_dir: Path, plan: str) -> dict[str, Any]:
    import torch

    fields = {
        "output_dir": str(output_dir),
        "num_train_epochs": args.frozen_epochs,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": 64,
        "learning_rate": LEARNING_RATES[plan],
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 10_000,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 42,
    }
    if not torch.cuda.is_available():
        fields.update(use_cpu=True, dataloader_pin_memory=False)
    return fields


def run_plain(args, files: dict[str, str], output_dir: Path, plan: str) -> dict[str, float]:
    """The plain Trainer: same tokenised rows, same frozen parameters, the whole network in every step."""
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from hf_transfer.backbones import load_tokenizer, resolve_model_path, set_trainable_top_layers
    from hf_transfer.data import load_raw_data, prepare_data
    from hf_transfer.recipe import load_recipe

    recipe = load_recipe({
        "source_data": files["source"], "target_data": None, "eval_data": files["target_labelled"],
        "max_length": args.max_length, "source_eval_fraction": 0.0, "model_name_or_path": args.model,
    })
    tokenizer = load_tokenizer(args.model)
    data = prepare_data(load_raw_data(recipe.data), tokenizer, recipe.data, seed=42)
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(args.model), num_labels=2)
    set_trainable_top_layers(model, PLANS[plan].get("trainable_layers", 0))

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_fields(args, output_dir, plan)),
        train_dataset=data.train.remove_columns(["length"]),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    out = trainer.train()
    evaluation = trainer.evaluate(eval_dataset=data.target_eval.remove_columns(
        [c for c in data.target_eval.column_names if c == "length"]))
    return {"seconds": out.metrics["train_runtime"], "rows": len(data.train), "accuracy": evaluation["eval_accuracy"]}


def run_hf(args, files: dict[str, str], output_dir: Path, plan: str, cache: bool) -> dict[str, float]:
    """``hf_transfer.train`` with the cache on or off. The cache's set-up (the check of its outputs and the fill) is
    timed and counted, the fill for the training rows' share of the rows it filled (the evaluation rows are filled
    too; the plain Trainer's evaluation is not counted either)."""
    import hf_transfer
    from hf_transfer import frozen_prefix

    timing = {"setup": 0.0, "fill": 0.0, "filled": 0}
    setup, fill = frozen_prefix.setup, frozen_prefix.FrozenPrefixCache.fill

    def timed_setup(*a, **k):
        start = time.perf_counter()
        try:
            return setup(*a, **k)
        finally:
            timing["setup"] += time.perf_counter() - start

    def timed_fill(self, tables, *a, **k):
        tables = [t for t in tables if t is not None]
        start = time.perf_counter()
        try:
            return fill(self, tables, *a, **k)
        finally:
            timing["fill"] += time.perf_counter() - start
            timing["filled"] += sum(len(t) for t in tables)

    frozen_prefix.setup, frozen_prefix.FrozenPrefixCache.fill = timed_setup, timed_fill
    try:
        result = hf_transfer.train({
            **_fields(args, output_dir, plan), **PLANS[plan],
            "model_name_or_path": args.model, "max_length": args.max_length, "source_data": files["source"],
            "target_data": None, "eval_data": files["target_labelled"], "source_eval_fraction": 0.0,
            "method": ["finetune"], "cache_frozen": cache, "overwrite_output_dir": True,
        })
    finally:
        frozen_prefix.setup, frozen_prefix.FrozenPrefixCache.fill = setup, fill
    m = result.metrics
    rows = len(result.trainer.train_dataset)
    share = rows / timing["filled"] if timing["filled"] else 0.0
    cache_seconds = timing["setup"] - timing["fill"] + timing["fill"] * share
    return {"seconds": m["train_runtime"] + cache_seconds, "fill_seconds": cache_seconds, "rows": rows,
            "accuracy": m["target_accuracy"]}


def frozen_cache_comparison(args, files: dict[str, str], workdir: Path, log=print) -> dict[str, Any]:
    """Every plan of ``args.frozen_plans``: plain / cache off / cache on, ``args.repeats`` times, order alternating."""
    import shutil

    results: dict[str, Any] = {"epochs": args.frozen_epochs, "plans": {}}
    runs = ("plain", "cache_off", "cache_on")
    for plan in args.frozen_plans:
        measured: dict[str, list[dict[str, float]]] = {r: [] for r in runs}
        for repeat in range(args.repeats):
            for run in runs if repeat % 2 == 0 else runs[::-1]:
                output_dir = workdir / "frozen" / f"{plan}_{run}"
                shutil.rmtree(output_dir, ignore_errors=True)
                if run == "plain":
                    out = run_plain(args, files, output_dir, plan)
                else:
                    out = run_hf(args, files, output_dir, plan, cache=run == "cache_on")
                out["rows_per_second"] = out["rows"] * args.frozen_epochs / out["seconds"]
                measured[run].append(out)
                shutil.rmtree(output_dir, ignore_errors=True)
                log(f"frozen cache {plan} {run}: {out['rows_per_second']:.1f} rows/s, accuracy {out['accuracy']:.3f}")
        summary = {run: {"rows_per_second": statistics.median(o["rows_per_second"] for o in outs),
                         "accuracy": statistics.median(o["accuracy"] for o in outs),
                         "fill_seconds": statistics.median(o.get("fill_seconds", 0.0) for o in outs)}
                   for run, outs in measured.items()}
        base = summary["plain"]["rows_per_second"]
        for run in runs:
            summary[run]["ratio_to_plain"] = summary[run]["rows_per_second"] / base
        results["plans"][plan] = {"runs": measured, "summary": summary}
    return results


def frozen_cache_table(results: dict[str, Any], args) -> str:
    """Markdown: one row per plan and run."""
    lines = [
        f"Frozen-prefix caching: {args.rows} rows of {args.max_length} tokens, batch {args.batch_size}, "
        f"{results['epochs']} epochs, median of {args.repeats} repeat(s); rows/s include the cache fill.",
        "",
        "| plan | run | rows/s | × plain Trainer | cache set-up (s) | accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    names = {"plain": "plain Trainer (whole network)", "cache_off": "hf-transfer, cache off",
             "cache_on": "hf-transfer, cache on"}
    for plan, entry in results["plans"].items():
        for run, s in entry["summary"].items():
            fill = f"{s['fill_seconds']:.2f}" if run == "cache_on" else ""
            lines.append(f"| {plan} | {names[run]} | {s['rows_per_second']:.1f} | {s['ratio_to_plain']:.2f}× | {fill} "
                         f"| {s['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def feature_reuse(args, files: dict[str, str], workdir: Path, log=print) -> dict[str, Any]:
    """Issue 23, item 4: a short instance-weighting run with the before/after t-SNE on, with the feature cache
    (:mod:`hf_transfer.feature_cache`) on and off. Instance weighting embeds the source and target tables, the t-SNE
    then embeds samples of them with the same pretrained model: with the cache, those rows are not embedded again.
    Counts the rows that ran through the model in feature passes and their seconds."""
    import os
    import shutil

    import hf_transfer
    from hf_transfer import embedding, feature_cache

    results: dict[str, Any] = {}
    original = embedding._embed_rows
    for label, on in (("cache off", "0"), ("cache on", "1")):
        passes = {"rows": 0, "seconds": 0.0}

        def counted(model, dataset, *a, passes=passes, **k):
            start = time.perf_counter()
            try:
                return original(model, dataset, *a, **k)
            finally:
                passes["seconds"] += time.perf_counter() - start
                passes["rows"] += len(dataset)

        output_dir = workdir / "feature_reuse" / label.replace(" ", "_")
        shutil.rmtree(output_dir, ignore_errors=True)
        saved = {k: os.environ.get(k) for k in (feature_cache.ENABLE_ENV, "HF_TRANSFER_TSNE_PLOT")}
        os.environ.update({feature_cache.ENABLE_ENV: on, "HF_TRANSFER_TSNE_PLOT": "1"})
        embedding._embed_rows = counted
        feature_cache.clear()
        start = time.perf_counter()
        try:
            hf_transfer.train({
                "model_name_or_path": args.model, "max_length": args.max_length, "source_data": files["source"],
                "target_data": files["target"], "method": ["instance_weighting"], "output_dir": str(output_dir),
                "max_steps": 2, "per_device_train_batch_size": args.batch_size, "save_strategy": "no",
                "disable_tqdm": True, "report_to": "none", "seed": 42, "source_eval_fraction": 0.0,
                **({"use_cpu": True, "dataloader_pin_memory": False} if not _cuda() else {}),
            })
        finally:
            embedding._embed_rows = original
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(output_dir, ignore_errors=True)
        results[label] = {**passes, "run_seconds": time.perf_counter() - start}
        log(f"feature reuse, {label}: {passes['rows']} rows embedded in {passes['seconds']:.1f} s")
    return results


def feature_reuse_table(results: dict[str, Any]) -> str:
    lines = ["Feature passes of an instance-weighting run with the before/after t-SNE (2 training steps):", "",
             "| feature cache | rows through the model | their seconds | whole run (s) |", "|---|---:|---:|---:|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['rows']} | {r['seconds']:.1f} | {r['run_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
