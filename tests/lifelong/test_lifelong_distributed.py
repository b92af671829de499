"""Lifelong learning under `accelerate launch` with 2 processes (gloo on the CPU) against one process.

Both runs train the same 2-task EWC recipe at the same global batch (2 processes x 4 rows against 1 x 8), on a tiny
BERT without dropout (``no_dropout_default_init_dir``), so they compute the same thing up to floating-point
summation order: the gradient of a mean over 8 rows (one process) against DDP's average of two means over 4 (two
processes). Tolerances: the accuracy matrix exactly (a duplicated or dropped evaluation row would move an entry by
at least 1/34); the final weights to 1e-6 (measured: 1.2e-7, while training moved them by 1.3e-2). The optimizer
is plain SGD: AdamW turns such rounding differences into sign-like updates wherever a gradient is close to zero
(measured: 3e-4 apart with AdamW). The EWC penalty matters (``ewc_lambda`` 100): with each process estimating the
Fisher on its own half of the rows, instead of summing them, the final weights were 7e-4 apart, far outside the
tolerance.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from hf_transfer.lifelong import train_lifelong
from tests.conftest import accelerate_launch, save_tiny_bert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def no_dropout_default_init_dir(tmp_path_factory) -> str:
    """The tiny BERT without dropout at its default init (0.02): with conftest's wider 0.5 init, round-off alone moves
    the EWC run's weights by ~4e-6, past this test's 1e-6 tolerance."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout-0.02"), hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)


def _recipe(model_dir: str, review_files: dict[str, str]) -> dict:
    # eval_fraction 0.35: 34 and 23 evaluation rows, odd counts that 2 processes cannot split evenly.
    return {
        "model_name_or_path": model_dir,
        "lifelong_method": "ewc",
        "ewc_lambda": 100.0,
        "fisher_samples": 15,
        "steps_per_task": 4,
        "tasks": [
            {"name": "books", "data": review_files["source"], "eval_fraction": 0.35},
            {"name": "kitchen", "data": review_files["target"], "eval_fraction": 0.35},
        ],
        "max_length": 32,
        "per_device_eval_batch_size": 8,
        "optim": "sgd",
        "learning_rate": 0.5,
        "warmup_steps": 0,
        "train_sampling_strategy": "random",
        "seed": 7,
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
    }


def _matrix(out: Path) -> np.ndarray:
    saved = json.loads((out / "accuracy_matrix.json").read_text())
    return np.array([[np.nan if v is None else v for v in row] for row in saved["matrix"]])


def test_two_processes_match_one(no_dropout_default_init_dir, review_files, tmp_path):
    recipe = _recipe(no_dropout_default_init_dir, review_files)
    path = tmp_path / "ewc.yaml"
    path.write_text(yaml.safe_dump(recipe))
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = accelerate_launch("-m", "hf_transfer", "train", str(path), "--output_dir", str(two),
                            "--per_device_train_batch_size", "4")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("written to") == 1  # the main process alone reports and writes
    assert out.stderr.count("lifelong ewc after books") == 1  # a logged progress line, on stderr
    train_lifelong(recipe, output_dir=str(one), per_device_train_batch_size=8)

    m1, m2 = _matrix(one), _matrix(two)
    assert np.isfinite(m2[1]).all() and np.isnan(m2[0, 1])
    np.testing.assert_array_equal(m2, m1)  # every evaluation row counted once, as one process counts it
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["forgetting"] == pytest.approx(m1[0, 0] - m1[1, 0])

    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert w1.keys() == w2.keys()
    start = load_file(str(Path(no_dropout_default_init_dir) / "model.safetensors"))
    moved = max(np.abs(w1[k] - start[k.removeprefix("bert.")]).max() for k in w1 if k.removeprefix("bert.") in start)
    assert moved > 5e-3  # the weights did train, so agreeing to 1e-6 says something
    for key in w1:
        np.testing.assert_allclose(w2[key], w1[key], atol=1e-6, rtol=0, err_msg=key)


def test_fisher_summed_over_processes_equals_one_process():
    """fisher_diagonal's ``sum_over_processes``, fed what an all-reduce would return for two disjoint shares of the
    rows, gives the Fisher of all the rows; an uneven split (2 and 1 rows) is weighted by its counts, not halves."""
    import torch
    from torch import nn

    from hf_transfer.lifelong import fisher_diagonal

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return type("Out", (), {"logits": self.lin(x)})

    model = Classifier()
    x, y = torch.randn(3, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 1])
    shares = [[{"x": x[:2], "labels": y[:2]}], [{"x": x[2:], "labels": y[2:]}]]
    sent = []
    for share in shares:  # each process's contribution to the collective
        fisher_diagonal(model, share, sum_over_processes=lambda t: sent.append(t.clone()) or t)
    total = sent[0] + sent[1]
    combined = [fisher_diagonal(model, share, sum_over_processes=lambda t: total) for share in shares]
    alone = fisher_diagonal(model, [{"x": x, "labels": y}])
    for fisher in combined:
        for name in alone:
            torch.testing.assert_close(fisher[name], alone[name])


def test_processes_check_same_compares_every_process():
    import torch

    from hf_transfer.lifelong.trainer import Processes

    class Accelerator:  # two processes whose gathered hashes are given
        process_index, num_processes, device = 0, 2, torch.device("cpu")

        def __init__(self, other):
            self.other = other

        def gather(self, local):
            return torch.cat([local, local + self.other])

    Processes(Accelerator(0)).check_same("replay buffer", [{"input_ids": [1, 2], "labels": 0}])
    with pytest.raises(RuntimeError, match="the replay buffer differs between processes"):
        Processes(Accelerator(1)).check_same("replay buffer", [{"input_ids": [1, 2], "labels": 0}])
    assert Processes().shard(list(range(5))) == list(range(5))  # one process: every row
