"""`accelerate launch` with 2 processes on the CPU (gloo): one run, sharded data, outputs written once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


LORA = ["--peft.peft_type", "LORA", "--peft.r", "2", "--peft.target_modules", "query"]
# DANN, evaluated (and scored by the label-free validators) at step 3
DANN = ["--method", "dann", "--dann.hidden_size", "16", "--eval_strategy", "steps", "--eval_steps", "3"]


# Full fine-tuning under 2 processes (sharding, outputs written once, equality with 1 process) is
# tests/test_distributed_equivalence.py::test_finetune.
@pytest.mark.parametrize("extra", [LORA, DANN], ids=["lora", "dann"])
def test_two_process_run(tiny_model_dir, review_files, tmp_path, extra):
    out_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "recipes/accelerate/multi_cpu.yaml"), "-m", "hf_transfer", "train",
        "--model_name_or_path", tiny_model_dir, "--source_data", review_files["source"],
        "--target_data", review_files["target"], "--output_dir", str(out_dir), "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--max_length", "32", "--save_strategy", "steps", "--save_steps", "3",
        "--disable_tqdm", "true", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("written to") == 1  # the main process alone writes and reports
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and 0 <= metrics["target_accuracy"] <= 1
    state = json.loads((out_dir / "checkpoint-3" / "trainer_state.json").read_text())
    # 86 training rows (96 minus 10 held out), 2 processes x 4 rows a step = 8 rows per step: 11 steps an epoch.
    # Had each process trained alone on all the data, an epoch would be 22 steps.
    assert state["epoch"] == pytest.approx(3 / 11, abs=1e-3)
    assert (out_dir / "checkpoint-3" / "rng_state_1.pth").is_file()  # both ranks took part
    marker = "adapter_config.json" if extra == LORA else "config.json"
    assert (out_dir / marker).is_file()
    if extra == DANN:
        check_dann_and_selection(out_dir, metrics, state)


def check_dann_and_selection(out_dir, metrics, state):
    """The discriminator was checkpointed, and the validator scores gathered from 2 processes equal those one
    process computes on the same model and rows (nothing dropped or counted twice by the sharding)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    import hf_transfer
    from hf_transfer.backbones import load_tokenizer
    from hf_transfer.data import TransferCollator, load_raw_data, prepare_data
    from hf_transfer.selection import VALIDATORS, build_selection
    from hf_transfer.trainer import METHOD_STATE_FILE, TransferTrainer

    assert any(k.startswith("methods.dann.discriminator") for k in load_file(
        str(out_dir / "checkpoint-3" / METHOD_STATE_FILE)))
    (logged,) = [entry for entry in state["log_history"] if "eval_snd" in entry]
    assert logged["step"] == 3
    for name in VALIDATORS:
        assert metrics[f"selection/{name}/step"] == 3 and metrics[f"selection/{name}/score"] == logged[f"eval_{name}"]

    recipe = hf_transfer.load_recipe(out_dir / "recipe.yaml", {"use_cpu": True, "output_dir": str(out_dir / "re")})
    tokenizer = load_tokenizer(str(out_dir))
    raw = load_raw_data(recipe.data, seed=recipe.training.seed)
    data = prepare_data(raw, tokenizer, recipe.data, seed=recipe.training.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(out_dir))
    selection = build_selection(recipe, model, data)
    trainer = TransferTrainer(model=model, args=recipe.training, processing_class=tokenizer,
                              data_collator=TransferCollator(tokenizer), eval_dataset=data.source_eval)
    scores = selection(trainer)
    assert set(scores) == set(VALIDATORS)
    for name, value in scores.items():
        assert value == pytest.approx(logged[f"eval_{name}"], rel=1e-4, abs=1e-6), name
