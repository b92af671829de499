"""`accelerate launch` with 2 processes on the CPU (gloo): one run, sharded data, outputs written once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


LORA = ["--peft.peft_type", "LORA", "--peft.r", "2", "--peft.target_modules", "query"]


@pytest.mark.parametrize("extra", [[], LORA], ids=["full", "lora"])
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
    marker = "adapter_config.json" if extra else "config.json"
    assert (out_dir / marker).is_file()
