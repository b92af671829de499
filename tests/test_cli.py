"""The command line: user errors are one line on stderr and exit code 2; `python -m hf_transfer` works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=REPO, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hf_transfer", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--learning_rat", "1"], "error: learning_rat: unknown recipe field; did you mean 'learning_rate'"),
        (["train", "--max_steps", "many"], "error: max_steps: expected int, got 'many'"),
        (["train", "missing.yaml"], "error: recipe 'missing.yaml': file not found"),
        (["train", "--source_data", "nope/none.jsonl"], "error: source_data: file 'nope/none.jsonl' does not exist"),
        (["train", "--text_column", "body"], "error: text_column: column 'body' is not in source_data"),
        (["evaluate", "/nonexistent", "--data", "x.jsonl"], "error: model: '/nonexistent' has neither config.json"),
        (["trian"], "error: unknown command 'trian'; did you mean 'train'?"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, monkeypatch, capsys):
    # In process (hf_transfer.cli.main, what the console script calls): a fresh interpreter per case would spend
    # seconds importing torch for each; test_a_user_error_exits_2_from_a_real_process covers the process itself.
    from hf_transfer.cli import main

    monkeypatch.chdir(REPO)
    code = main([*args, "--output_dir", str(tmp_path / "o")] if args[0] == "train" else args)
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    assert message in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_a_user_error_exits_2_from_a_real_process(tmp_path):
    out = cli("train", "--max_steps", "many", "--output_dir", str(tmp_path / "o"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == "error: max_steps: expected int, got 'many'"
    assert "Traceback" not in out.stderr and not (tmp_path / "o").exists()


def test_help_and_methods():
    out = cli("--help")
    assert out.returncode == 0 and "hf-transfer train" in out.stdout
    out = cli("methods")
    assert out.returncode == 0 and "finetune" in out.stdout.split()


def test_train_then_evaluate(tiny_model_dir, review_files, tmp_path):
    out_dir = tmp_path / "model"
    out = cli("train", "--model_name_or_path", tiny_model_dir, "--source_data", review_files["source"],
              "--target_data", review_files["target"], "--output_dir", str(out_dir), "--max_steps", "2",
              "--max_length", "32", "--save_strategy", "no", "--use_cpu", "--disable_tqdm", "true")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    out = cli("evaluate", str(out_dir), "--data", review_files["target"], "--max_length", "32")
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads(out.stdout)
    assert evaluated["num_examples"] == 64
    # same model, same data, same truncation: the same accuracy as the run reported
    assert evaluated["accuracy"] == pytest.approx(metrics["target_accuracy"])
