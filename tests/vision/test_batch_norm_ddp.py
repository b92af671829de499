"""dsbn + adabn under `accelerate launch` with 2 processes on the CPU (gloo): the split reaches every process's
layers, and the exported statistics are those of all target rows, as one process computes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.vision.test_batch_norm_adaptation import _reference_statistics, _usps_pixels

REPO = Path(__file__).resolve().parents[2]


def test_two_process_dann_dsbn_adabn(tiny_resnet_dir, digits_npz, tmp_path):
    out_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "recipes/accelerate/multi_cpu.yaml"), "-m", "hf_transfer", "train",
        "--model_name_or_path", tiny_resnet_dir, "--image_column", "image",
        "--source_data", digits_npz, "--source_config", "mnist",
        "--target_data", digits_npz, "--target_config", "usps",
        "--method", "dann", "dsbn", "adabn", "--dann.hidden_size", "16", "--adabn.batch_size", "64",
        "--output_dir", str(out_dir), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--save_strategy", "no", "--selection_validators", "none", "--disable_tqdm", "true",
        "--train_sampling_strategy", "random",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-12000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["adabn_rows"] == 40 and metrics["train_steps"] == 2

    from transformers import AutoModelForImageClassification

    exported = AutoModelForImageClassification.from_pretrained(str(out_dir)).eval()
    expected = _reference_statistics(exported, [_usps_pixels(digits_npz, out_dir)])
    from hf_transfer.methods._batchnorm import batch_norm_layers

    for name, bn in batch_norm_layers(exported):
        mean, var = expected[name]
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-4)
