"""Two processes train exactly like one with the same global batch, for every method family.

Each case trains the same recipe twice: one process with a batch of 8 rows (or 2 episodes), and
``accelerate launch --config_file recipes/accelerate/multi_cpu.yaml`` (2 processes, gloo) with 4 rows (or 1 episode)
each. Then it compares every logged loss step by step, the final metrics and the final weights.

Why the runs can be compared this tightly: the tiny model has no dropout (``no_dropout_model_dir``), the
optimizer is plain SGD (so weights differ exactly as much as the gradients do; Adam would magnify float noise in
near-zero gradients), and batches are drawn at random rather than grouped by length (grouping depends on the
per-process batch size). What remains is float round-off from summing in another order: losses agree to ``RTOL``,
weights to ``WEIGHT_ATOL``.

What each case proves:

* finetune: the data sharding, the loss average and the evaluation (the Trainer's own ``eval_loss`` counts the rows
  repeated to even out the last batch; TransferTrainer recomputes it from the gathered logits);
* instance_weighting + dann + mmd, in one run: the weights are estimated once and shared, and the weight-normalised
  loss is normalised by the global weight total; the discriminator sees the global batch; MMD is estimated over the
  global batch (8 vs 8 rows), not as the mean of two 4-vs-4 estimates (see hf_transfer.distributed);
* l2sp + bss + lwf, in one run: the weight penalty, the global batch's spectrum and the frozen copy's features;
  mlm + dann: the MLM loss is the mean over every process's masked tokens (with deterministic masks);
* multitask: every process draws the same task for a step and its share of the step's rows;
* meta: one process with 2 episodes a step trains on the episodes two processes with 1 episode each share;
* FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 (the shipped configs on 2 gloo processes, through tests/engines_on_cpu.py):
  MMD (and LoRA under FSDP2) train like one process, DANN (its discriminator sharded with the model) like DDP, and
  a sharded FSDP2 checkpoint resumes exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from tests.conftest import accelerate_launch

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-3
WEIGHT_ATOL = 1e-5
STEPS = 4

pytestmark = pytest.mark.slow


def common(model_dir: str, out: Path) -> dict:
    return {"model_name_or_path": model_dir, "output_dir": str(out), "max_length": 32, "max_steps": STEPS,
            "optim": "sgd", "learning_rate": 0.05, "warmup_steps": 0, "logging_steps": 1, "seed": 11,
            "per_device_eval_batch_size": 8, "disable_tqdm": True, "report_to": "none"}


def transfer_recipe(model_dir, review_files, out, **extra) -> dict:
    return {**common(model_dir, out), "source_data": review_files["source"], "target_data": review_files["target"],
            "train_sampling_strategy": "random", "save_strategy": "steps", "save_steps": STEPS, **extra}


ENGINE_CONFIGS = {"fsdp": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml"}


def engine_config(engine: str, folder: Path) -> Path:
    """The shipped config of ``engine``; ``zero3`` is deepspeed_zero2.yaml at stage 3, gathering 16-bit weights for
    the export (check-launch asks for that)."""
    if engine != "zero3":
        return REPO / "recipes/accelerate" / ENGINE_CONFIGS[engine]
    config = yaml.safe_load((REPO / "recipes/accelerate/deepspeed_zero2.yaml").read_text())
    config["deepspeed_config"].update(zero_stage=3, zero3_save_16bit_model=True)
    path = folder / "accelerate-zero3.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def engine_launch(config: Path, *args: str, num_processes: int = 2) -> list[str]:
    """``accelerate launch`` with an FSDP or DeepSpeed config on gloo CPU processes, through tests/engines_on_cpu.py
    (Accelerate enables both for GPU groups only); fp32, as this CPU has no fast bf16."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
            str(num_processes), "--mixed_precision", "no", str(REPO / "tests/engines_on_cpu.py"), *args]


def run(recipe: dict, tmp_path: Path, name: str, *, processes: int, size_key: str, global_size: int,
        engine: str | None = None) -> Path:
    """Train ``recipe`` with ``processes`` processes, each given ``global_size / processes`` of ``size_key``; under
    ``engine`` (fsdp, zero2, zero3) when given, else DDP."""
    recipe = {**recipe, "output_dir": str(tmp_path / name), size_key: global_size // processes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    train = ["-m", "hf_transfer", "train", str(path)]
    if engine:
        cmd = engine_launch(engine_config(engine, tmp_path), "train", str(path), num_processes=processes)
    elif processes == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = accelerate_launch(*train, num_processes=processes)
    # One thread a process: the two runs then sum in the same order within each matmul.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("written to") == 1  # the main process alone writes and reports
    return tmp_path / name


def pair(recipe: dict, tmp_path: Path, *, size_key: str = "per_device_train_batch_size",
         global_size: int = 8) -> tuple[Path, Path]:
    one = run(recipe, tmp_path, "one", processes=1, size_key=size_key, global_size=global_size)
    two = run(recipe, tmp_path, "two", processes=2, size_key=size_key, global_size=global_size)
    return one, two


def assert_same_metrics(one: Path, two: Path, keys: list[str]) -> dict:
    a = json.loads((one / "metrics.json").read_text())
    b = json.loads((two / "metrics.json").read_text())
    for key in keys:
        assert key in a, f"{key} missing from metrics.json ({sorted(a)})"
        assert b[key] == pytest.approx(a[key], rel=RTOL, abs=1e-6), key
    return a


def assert_same_weights(one: Path, two: Path, filename: str = "model.safetensors") -> None:
    a, b = load_file(str(one / filename)), load_file(str(two / filename))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst <= WEIGHT_ATOL, f"{filename}: weights differ by up to {worst:.2e}"


def logged_steps(run_dir: Path, prefix_keys: tuple[str, ...]) -> list[dict]:
    state = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    rows = [{k: v for k, v in entry.items() if k == "step" or k in prefix_keys or k.endswith("/loss")}
            for entry in state["log_history"] if "loss" in entry]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return rows


def assert_same_history(one: Path, two: Path, keys: tuple[str, ...] = ("loss", "task_loss")) -> list[dict]:
    a, b = logged_steps(one, keys), logged_steps(two, keys)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert y[key] == pytest.approx(x[key], rel=RTOL, abs=1e-5), f"step {x['step']}: {key}"
    return a


def test_finetune(no_dropout_model_dir, review_files, tmp_path):
    one, two = pair(transfer_recipe(no_dropout_model_dir, review_files, tmp_path), tmp_path)
    assert_same_history(one, two)
    assert_same_metrics(one, two, ["train_loss", "source_accuracy", "source_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)
    state = json.loads((two / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    # 86 training rows (96 minus 10 held out), 8 rows a step: 11 steps an epoch. Had each process trained alone on
    # all the data, an epoch would be 22 steps.
    assert state["epoch"] == pytest.approx(STEPS / 11, abs=1e-3)
    assert (two / f"checkpoint-{STEPS}" / "rng_state_1.pth").is_file()  # both ranks took part


def test_instance_weighting_dann_and_mmd(no_dropout_model_dir, review_files, tmp_path):
    # One run for three families (instance weighting, adversarial, kernel discrepancy): the suite stays short.
    methods = ["instance_weighting", "dann", "mmd"]
    recipe = transfer_recipe(no_dropout_model_dir, review_files, tmp_path, method=methods,
                             dann={"dropout": 0.0, "hidden_size": 16})
    one, two = pair(recipe, tmp_path)
    np.testing.assert_allclose(np.load(two / "instance_weights.npy"), np.load(one / "instance_weights.npy"),
                               rtol=1e-6)
    assert np.ptp(np.load(one / "instance_weights.npy")) > 0.1  # the weights are not uniform: they matter
    history = assert_same_history(one, two, ("loss", "task_loss", "dann/domain_accuracy"))
    assert all(abs(h["mmd/loss"]) > 1e-4 for h in history)  # the MMD term is really in play
    assert_same_metrics(one, two, ["train_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)
    # the discriminator too
    assert_same_weights(one / f"checkpoint-{STEPS}", two / f"checkpoint-{STEPS}", "transfer_methods.safetensors")


def test_regularised_finetuning_l2sp_bss_and_lwf(no_dropout_model_dir, review_files, tmp_path):
    # The penalty on the weights (each process adds the same gradient), the spectrum of the global batch, and the
    # frozen copy's features gathered to line up with the global batch.
    recipe = transfer_recipe(no_dropout_model_dir, review_files, tmp_path, method=["l2sp", "bss", "lwf"],
                             bss={"rows": "all", "trade_off": 0.01}, lwf={"trade_off": 10.0})
    one, two = pair(recipe, tmp_path)
    history = assert_same_history(one, two)
    assert all(h["l2sp/loss"] > 0 and h["bss/loss"] > 0 for h in history[1:])  # every term is in play
    assert all(h["lwf/loss"] > 0 for h in history[1:])
    assert_same_metrics(one, two, ["train_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)


def test_mlm_with_dann(no_dropout_model_dir, review_files, tmp_path):
    # Every token masked as [MASK]: the masks no longer depend on each process's random draws, so the runs compare
    # exactly; the MLM loss must be the mean over all processes' masked tokens (not the mean of per-process means).
    recipe = transfer_recipe(no_dropout_model_dir, review_files, tmp_path, method=["mlm", "dann"],
                             mlm={"mlm_probability": 1.0, "mask_replace_prob": 1.0, "random_replace_prob": 0.0},
                             dann={"dropout": 0.0, "hidden_size": 16})
    one, two = pair(recipe, tmp_path)
    history = assert_same_history(one, two)
    assert all(h["mlm/loss"] > 1 for h in history)
    assert_same_metrics(one, two, ["train_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)
    # the MLM head and the discriminator too
    assert_same_weights(one / f"checkpoint-{STEPS}", two / f"checkpoint-{STEPS}", "transfer_methods.safetensors")


def test_multitask_hard_sharing(no_dropout_model_dir, review_files, tmp_path):
    recipe = {**common(no_dropout_model_dir, tmp_path), "save_strategy": "no",
              "tasks": [{"name": "books", "data": review_files["source"]},
                        {"name": "kitchen", "data": review_files["target"]}]}
    one, two = pair(recipe, tmp_path)
    assert_same_metrics(one, two, ["train_loss", "books/accuracy", "books/loss", "kitchen/accuracy", "kitchen/loss",
                                   "books/train_rows", "kitchen/train_rows"])
    assert_same_weights(one, two)


def test_meta_fomaml(no_dropout_model_dir, review_files, tmp_path):
    recipe = {**common(no_dropout_model_dir, tmp_path), "meta_method": "fomaml", "inner_steps": 1,
              "n_way": 2, "k_shot": 2, "n_query": 3, "eval_shots": [2], "eval_episodes": 3, "eval_n_query": 4,
              "tasks": [{"name": "books", "data": review_files["source"]}],
              "test_tasks": [{"name": "kitchen", "data": review_files["target"], "eval_fraction": 0.5}]}
    one, two = pair(recipe, tmp_path, size_key="episodes_per_device", global_size=2)
    metrics = assert_same_metrics(one, two, ["train_loss"])
    assert_same_weights(one, two)
    few_shot = [k for k in metrics if k.endswith("accuracy")]
    assert few_shot
    assert_same_metrics(one, two, few_shot)


SIZE = {"size_key": "per_device_train_batch_size", "global_size": 8}


def assert_same_model(one: Path, two: Path) -> None:
    """The exported models, compared as transformers loads them (ZeRO-3's export names LayerNorm weights with the
    legacy gamma/beta, which transformers writes back when a model was loaded under ZeRO-3 and renames on load)."""
    from transformers import AutoModelForSequenceClassification

    a = AutoModelForSequenceClassification.from_pretrained(one).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(two).state_dict()
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= WEIGHT_ATOL, f"weights differ by up to {worst:.2e}"


def test_sharded_engines_train_like_one_process(no_dropout_model_dir, review_files, tmp_path):
    """FSDP2 (the shipped fsdp.yaml: each BertLayer, then the rest), DeepSpeed ZeRO-2 (deepspeed_zero2.yaml) and
    ZeRO-3, each over 2 processes, train and export what one plain process does with MMD: the same losses, metrics
    and weights, gathered from the shards at export."""
    recipe = transfer_recipe(no_dropout_model_dir, review_files, tmp_path, method="mmd")
    one = run(recipe, tmp_path, "one", processes=1, **SIZE)
    for engine in ("fsdp", "zero2", "zero3"):
        two = run(recipe, tmp_path, engine, processes=2, engine=engine, **SIZE)
        assert_same_history(one, two)
        assert_same_metrics(one, two, ["train_loss", "source_accuracy", "target_accuracy", "target_loss"])
        if engine == "zero3":
            assert_same_model(one, two)
        else:
            assert_same_weights(one, two)


def test_fsdp2_trains_lora_like_one_process(no_dropout_model_dir, review_files, tmp_path):
    recipe = transfer_recipe(no_dropout_model_dir, review_files, tmp_path,
                             peft={"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]})
    one = run(recipe, tmp_path, "one", processes=1, **SIZE)
    two = run(recipe, tmp_path, "fsdp", processes=2, engine="fsdp", **SIZE)
    assert_same_history(one, two)
    assert_same_weights(one, two, "adapter_model.safetensors")


def test_discriminator_under_sharded_engines_trains_like_ddp(no_dropout_model_dir, review_files, tmp_path):
    """DANN's discriminator is part of the engine's module under FSDP2 and ZeRO-2 (a submodule of the model), so the
    Trainer's gradient-norm clip covers it too, where DDP clips the model alone: the runs here do not clip, and are
    compared with DDP, which they equal (one process differs from all three by float noise, which unclipped
    adversarial updates grow to 1.5e-4 in 4 steps). The export leaves the discriminator out."""
    recipe = transfer_recipe(no_dropout_model_dir, review_files, tmp_path, method="dann", max_grad_norm=0.0,
                             dann={"dropout": 0.0, "hidden_size": 16})
    ddp = run(recipe, tmp_path, "ddp", processes=2, **SIZE)
    for engine in ("fsdp", "zero2"):
        two = run(recipe, tmp_path, engine, processes=2, engine=engine, **SIZE)
        assert_same_history(ddp, two, ("loss", "task_loss", "dann/domain_loss", "dann/domain_accuracy"))
        assert_same_weights(ddp, two)  # same keys: no discriminator in the export


def test_fsdp2_dann_resumes_exactly(no_dropout_model_dir, review_files, tmp_path):
    """Resuming an FSDP2 run from its sharded checkpoint (Accelerate's distributed checkpoint of the model, the
    discriminator inside it, and of the optimizer) ends where the uninterrupted run ends: the discriminator steers
    the model's gradients through the reversal layer, so a discriminator not restored shows in the weights."""
    recipe = transfer_recipe(no_dropout_model_dir, review_files, tmp_path, method="dann", save_steps=2,
                             dann={"dropout": 0.0, "hidden_size": 16})
    full = run(recipe, tmp_path, "full", processes=2, engine="fsdp", **SIZE)
    resumed = run({**recipe, "resume_from_checkpoint": str(full / "checkpoint-2")}, tmp_path, "resumed",
                  processes=2, engine="fsdp", **SIZE)
    assert_same_history(full, resumed, ("loss", "task_loss", "dann/domain_loss"))
    assert_same_weights(full, resumed)
