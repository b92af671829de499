"""MNIST -> USPS and USPS -> MNIST with EfficientNet-Lite0 (ImageNet weights): a plain ``transformers.Trainer``
fine-tune as the baseline, then the linear probe, fine-tuning, AdaBN, DANN, MMD and CDAN, each with and without
batch-norm adaptation; target accuracy with a 95% interval over seeds.

Conditions (``--methods``; all by default):

* ``trainer``: ``transformers.Trainer`` on the same model (EfficientNet-Lite0, new 10-class head), the same images
  (image processor, size, augmentation), optimiser, schedule and budget as ``finetune``, no hf_transfer in the loop;
* ``probe``, ``probe+adabn``: ``recipes/image_classification/linear_probe.yaml`` (frozen backbone), without / with
  ``adabn`` (the frozen backbone's batch-norm statistics re-estimated on the target rows after training);
* ``finetune``, ``adabn``: ``finetune.yaml``, without / with ``adabn``;
* ``dann``, ``mmd``, ``cdan`` and ``dann+bn``, ``mmd+bn``, ``cdan+bn``: ``dann.yaml``, ``mmd.yaml`` and
  ``finetune.yaml`` with ``method: cdan`` (trade-off as DANN's), without / with batch-norm adaptation (``dsbn``:
  per-domain batch norm during training, then ``adabn``).

Every condition runs the recipe with one budget set on the command line: ``--steps`` optimizer steps of
``--batch_size`` labelled source digits (plus as many unlabelled target digits for the adaptation methods), images
upsampled from 16x16 to ``--image_size``. Target accuracy is measured on every target digit (``--max_eval_samples`` to
cut it; the target's labels are never used in training: the usual transductive protocol of this benchmark). Data:
../shared/data/digits/mnist_usps_16x16.npz (2,000 MNIST, 1,800 USPS digits). Finished runs are appended to
``<workdir>/runs.jsonl``; a rerun skips them. Results: ``--json`` (every run and the summary) and the markdown table.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/digits.py --steps 20 --seeds 1 --methods trainer probe adabn \
        --directions mnist:usps                                                       # a quick look
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/digits.py --json benchmarks/results/digits.json \
        --output benchmarks/results/digits.md                                          # the full protocol

Cost on 2 CPU cores shared with other jobs: a run of 100 steps took 19 minutes at 96 px, 4.5 to 8 minutes at 64 px
(fewer on an idle machine), so the full protocol (11 conditions x 2 directions x 3 seeds) is many hours: run one
process per direction in parallel (``--directions mnist:usps`` / ``usps:mnist``, the same ``--workdir``), or cut
``--methods`` or ``--image_size``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import RunLog, add_grid_options, prepare_grid  # noqa: E402

DIGITS = REPO.parent / "shared" / "data" / "digits" / "mnist_usps_16x16.npz"
RECIPES = REPO / "recipes" / "image_classification"
MODEL = "efficientnet-lite0"
#: name -> (recipe file, recipe overrides). ``trainer`` is the plain transformers.Trainer baseline.
BN = ["dsbn", "adabn"]
CDAN = {"method": ["cdan"], "cdan.trade_off": 0.1}
CONDITIONS: dict[str, tuple[str, dict]] = {
    "trainer": ("finetune", {}),
    "probe": ("linear_probe", {}),
    "probe+adabn": ("linear_probe", {"method": ["finetune", "adabn"]}),
    "finetune": ("finetune", {}),
    "adabn": ("finetune", {"method": ["finetune", "adabn"]}),
    "dann": ("dann", {}),
    "dann+bn": ("dann", {"method": ["dann", *BN]}),
    "mmd": ("mmd", {}),
    "mmd+bn": ("mmd", {"method": ["mmd", *BN]}),
    "cdan": ("finetune", CDAN),
    "cdan+bn": ("finetune", {**CDAN, "method": ["cdan", *BN]}),
}
# Published figures, for orientation only (other networks, full training budgets, other subsets in places).
REFERENCES = [
    ("source only, LeNet-class network (MNIST→USPS)", "about 75"),
    ("ADDA (Tzeng et al. CVPR 2017), MNIST→USPS", "89.4"),
    ("CDAN+E (Long et al. NeurIPS 2018), MNIST→USPS", "95.6"),
]


def common_overrides(args, seed: int, output_dir: Path) -> dict:
    """The budget every condition shares (the plain-Trainer baseline reads the same values)."""
    overrides = {
        "image_size": args.image_size, "max_steps": args.steps, "warmup_steps": max(1, args.steps // 15),
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": 256, "seed": seed,
        "logging_steps": max(1, args.steps // 4), "selection_validators": ["none"], "eval_strategy": "no",
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "use_cpu": not args.gpu,
        "learning_rate": args.lr, "image_augmentation": args.augmentation, "output_dir": str(output_dir),
    }
    if args.max_eval_samples:
        overrides["max_eval_samples"] = args.max_eval_samples
    return overrides


def run_recipe(direction: str, condition: str, seed: int, args, output_dir: Path) -> dict:
    import hf_transfer

    recipe, extra = CONDITIONS[condition]
    source, target = direction.split(":")
    overrides = {"source_data": str(DIGITS), "source_config": source, "target_data": str(DIGITS),
                 "target_config": target, **common_overrides(args, seed, output_dir), **extra}
    if recipe == "linear_probe":
        overrides["learning_rate"] = args.probe_lr
    result = hf_transfer.train(str(RECIPES / f"{recipe}.yaml"), **overrides)
    m = result.metrics
    return {"target_accuracy": m["target_accuracy"], "source_accuracy": m.get("source_accuracy")}


def run_plain_trainer(direction: str, seed: int, args, output_dir: Path) -> dict:
    """``finetune`` without hf_transfer's trainer: transformers.Trainer on the labelled source digits, the same model
    loader, image processor, augmentation and optimiser settings; accuracy on the target digits."""
    import numpy as np
    from transformers import Trainer, TrainingArguments, set_seed

    import hf_transfer  # noqa: F401  (registers EfficientNet-Lite with the Auto classes)
    from hf_transfer.backbones import load_classifier, load_image_processor
    from hf_transfer.vision.data import ImageCollator, augment_table, load_npz

    source, target = direction.split(":")
    o = common_overrides(args, seed, output_dir)
    set_seed(seed)
    train = load_npz(DIGITS, field="source_data", prefix=source).rename_column("label", "labels")
    # The same training rows as the recipes: they hold out source_eval_fraction (0.1) of the source, split so.
    train = train.train_test_split(test_size=0.1, seed=seed)["train"]
    train = augment_table(train, o["image_augmentation"] or [], seed=seed)
    test = load_npz(DIGITS, field="target_data", prefix=target)
    if args.max_eval_samples:
        test = test.select(range(min(len(test), args.max_eval_samples)))
    processor = load_image_processor(MODEL, image_size=args.image_size)
    model = load_classifier(MODEL, num_labels=10, image=True, config_overrides={"image_size": args.image_size})
    training_args = TrainingArguments(
        output_dir=str(output_dir), max_steps=o["max_steps"], seed=seed,
        per_device_train_batch_size=o["per_device_train_batch_size"], per_device_eval_batch_size=256,
        learning_rate=o["learning_rate"], weight_decay=0.01, warmup_steps=o["warmup_steps"],
        lr_scheduler_type="linear", logging_steps=o["logging_steps"], save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=o["use_cpu"], remove_unused_columns=False, dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=ImageCollator(processor))
    trainer.train()
    logits = trainer.predict(test.rename_column("label", "labels")).predictions
    return {"target_accuracy": float(np.mean(np.argmax(logits, axis=-1) == np.asarray(test["label"]))),
            "source_accuracy": None}


def budget_of(args) -> dict:
    """What makes two runs comparable; a rerun reuses only runs with the same budget."""
    return {"image_size": args.image_size, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "probe_lr": args.probe_lr, "augmentation": args.augmentation, "max_eval_samples": args.max_eval_samples}


def interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% t-interval of the mean, in percent (``None`` for one seed)."""
    pct = [100 * v for v in values]
    if len(pct) < 2:
        return statistics.mean(pct), None
    from scipy import stats

    half = stats.t.ppf(0.975, len(pct) - 1) * statistics.stdev(pct) / len(pct) ** 0.5
    return statistics.mean(pct), half


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, half = interval(values)
    return f"{mean:.1f}" + (f" ± {half:.1f}" if half is not None else "") + f" (n={len(values)})"


def report(runs: list[dict], args) -> str:
    from _machine import machine_header

    device = "GPU" if args.gpu else "CPU"
    lines = ["# Digits: MNIST ↔ USPS with EfficientNet-Lite0", "", machine_header(), "",
             f"Budget ({device}): {args.steps} steps of {args.batch_size} source digits (+ {args.batch_size} "
             f"unlabelled target digits for DANN/MMD/CDAN), 16×16 grey digits as RGB, upsampled to "
             f"{args.image_size} px, "
             f"augmentation {args.augmentation or 'none'}, learning rate {args.lr} (probe {args.probe_lr}); target "
             f"accuracy on {args.max_eval_samples or 'all'} target digits. `+bn`: dsbn during training, then adabn.",
             "", "Target accuracy, %: mean ± half-width of the 95% t-interval over seeds:", "",
             "| condition | " + " | ".join(d.replace(":", "→").replace("mnist", "MNIST").replace("usps", "USPS")
                                         for d in args.directions) + " |",
             "|---|" + "---:|" * len(args.directions)]
    for condition in args.methods:
        cells = [cell([r["target_accuracy"] for r in runs if (r["direction"], r["condition"]) == (d, condition)])
                 for d in args.directions]
        name = "plain transformers Trainer (baseline)" if condition == "trainer" else condition
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    wall = sum(r["wall_s"] for r in runs)
    lines += ["", f"{len(runs)} runs, {wall / 60:.1f} min of wall time in all "
              f"(mean {wall / max(len(runs), 1):.0f} s a run, model loading and evaluation included).", "",
              "Published references (other networks, full training budgets; for orientation):", ""]
    lines += [f"- {name}: {value}%" for name, value in REFERENCES]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--directions", nargs="+", default=["mnist:usps", "usps:mnist"])
    parser.add_argument("--methods", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (the recipes train 300)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--augmentation", nargs="*", default=["shift"], help="image_augmentation (none: no value)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--probe_lr", type=float, default=3e-3)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    add_grid_options(parser, REPO / "outputs" / "bench_digits")
    args = parser.parse_args(argv)

    workdir = prepare_grid(args)
    budget = budget_of(args)
    log = RunLog(workdir, budget, keys=("direction", "condition", "seed"))
    # Seed by seed, so that a run cut short still has every condition on the seeds it finished.
    for seed in args.seeds:
        for direction in args.directions:
            for condition in args.methods:
                tag = hashlib.sha1(json.dumps(budget, sort_keys=True).encode()).hexdigest()[:8]  # parallel budgets
                run = log.run(
                    {"direction": direction, "condition": condition, "seed": seed},
                    workdir / f"{direction.replace(':', '2')}-{condition}-{seed}-{tag}",
                    lambda out, d=direction, c=condition, s=seed: (
                        run_plain_trainer(d, s, args, out) if c == "trainer" else run_recipe(d, c, s, args, out)))
                if run is None:
                    continue
                print(f"digits: {direction} {condition} seed {seed}: target accuracy {run['target_accuracy']:.4f} "
                      f"({run['wall_s']:.0f} s)", flush=True)
    runs = log.select(direction=args.directions, condition=args.methods, seed=args.seeds)
    summary = {f"{d} {c}": dict(zip(("mean", "ci95"), interval(accs)))
               for d in args.directions for c in args.methods
               if (accs := [r["target_accuracy"] for r in runs if (r["direction"], r["condition"]) == (d, c)])}
    log.report(args, report(runs, args), runs, summary)


if __name__ == "__main__":
    main()
