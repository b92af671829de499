"""`hf-transfer evaluate`: the saved recipe's settings, the recipe's metrics equal to scikit-learn, bootstrap
intervals equal to scipy's, a progress bar, and one-line errors before any model loads."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score

from hf_transfer.cli import main
from tests.conftest import read_jsonl, write_jsonl

METRICS = ["accuracy", "macro_f1", "weighted_recall"]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, review_files, tmp_path_factory) -> dict:
    """A tiny model trained on reviews renamed to `review` / `stars`, at max_length 32, with three metrics."""
    import hf_transfer

    folder = tmp_path_factory.mktemp("evaluate-cli")
    data = {}
    for side in ("source", "target"):
        rows = [{"review": r["text"], "stars": r["label"]} for r in read_jsonl(Path(review_files[side]))]
        data[side] = str(write_jsonl(folder / f"{side}.jsonl", rows))
    result = hf_transfer.train({
        "model_name_or_path": tiny_model_dir, "source_data": data["source"], "target_data": data["target"],
        "text_column": "review", "label_column": "stars", "max_length": 32, "metrics": METRICS,
        "output_dir": str(folder / "model"), "max_steps": 3, "per_device_train_batch_size": 8,
        "learning_rate": 1e-3, "save_strategy": "no", "use_cpu": True, "disable_tqdm": True,
    })
    return {"model": str(result.output_dir), "data": data["target"], "metrics": result.metrics}


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def reference_predictions(model_dir: str, data: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Predictions made by hand with plain transformers, at ``max_length`` tokens."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = read_jsonl(Path(data))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    enc = tokenizer([r["review"] for r in rows], truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt")
    with torch.no_grad():
        preds = model(**enc).logits.argmax(-1).numpy()
    return preds, np.array([r["stars"] for r in rows])


def test_evaluate_uses_the_saved_recipe_and_equals_scikit_learn_with_scipy_intervals(trained):
    code, out, err = run_cli("evaluate", trained["model"], "--data", trained["data"])
    assert code == 0, err
    result = json.loads(out)
    # columns (review / stars), max_length and metrics all came from recipe.yaml
    assert result["max_length"] == 32 and result["num_examples"] == 64
    preds, labels = reference_predictions(trained["model"], trained["data"], 32)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert result["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert result["weighted_recall"] == pytest.approx(recall_score(labels, preds, average="weighted"))
    for key in METRICS:  # what training reported on the same rows
        assert result[key] == pytest.approx(trained["metrics"][f"target_{key}"])
    assert result["bootstrap_resamples"] == 1000 and result["confidence_level"] == 0.95
    reference = scipy.stats.bootstrap((preds, labels), lambda p, r: f1_score(r, p, average="macro"), paired=True,
                                      vectorized=False, method="percentile", n_resamples=1000,
                                      rng=np.random.default_rng(0)).confidence_interval
    assert (result["macro_f1_ci_low"], result["macro_f1_ci_high"]) == pytest.approx((reference.low, reference.high))
    assert result["accuracy_ci_low"] <= result["accuracy"] <= result["accuracy_ci_high"]
    assert list(result)[:3] == ["accuracy", "accuracy_ci_low", "accuracy_ci_high"]


def test_command_line_settings_win_over_the_saved_recipe(trained):
    code, out, err = run_cli("evaluate", trained["model"], "--data", trained["data"], "--max_length", "8",
                             "--metrics", "micro_f1", "--bootstrap_resamples", "0")
    assert code == 0, err
    result = json.loads(out)
    preds, labels = reference_predictions(trained["model"], trained["data"], 8)
    assert result["max_length"] == 8
    assert result["micro_f1"] == pytest.approx(f1_score(labels, preds, average="micro"))
    assert "accuracy" not in result and "micro_f1_ci_low" not in result and "bootstrap_resamples" not in result


def test_a_saved_max_length_beyond_the_model_is_capped(trained, tmp_path):
    model = shutil.copytree(trained["model"], tmp_path / "model")
    recipe = (model / "recipe.yaml").read_text()
    (model / "recipe.yaml").write_text(recipe.replace("max_length: 32", "max_length: 300"))
    code, out, err = run_cli("evaluate", str(model), "--data", trained["data"], "--bootstrap_resamples", "0")
    assert code == 0, err
    assert json.loads(out)["max_length"] == 128  # the tiny BERT's max_position_embeddings


def _damaged(kind: str, model: Path) -> None:
    if kind == "config":
        (model / "config.json").write_text('{"model_type": "bert", ')
    else:
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.mark.parametrize("args, damage, message", [
    (["--batch_size", "0"], None, "error: batch_size: must be >= 1, got 0"),
    (["--max_length", "1000"], None, "error: max_length: 1000 is more than this model takes (128 tokens"),
    (["--max_length", "0"], None, "error: max_length: must be >= 1"),
    (["--metrics", "acuracy"], None, "error: metrics: 'acuracy' is not a shipped metric"),
    (["--bootstrap_resamples", "-1"], None, "error: bootstrap_resamples: must be >= 0"),
    (["--confidence_level", "95"], None, "error: confidence_level: must be in (0, 1)"),
    (["--device", "tpu9"], None, "error: device: unknown device 'tpu9'"),
    (["--text_column", "body"], None, "error: text_column: column 'body' is not in data"),
    ([], "config", "config.json' is not valid JSON"),
    ([], "weights", "model.safetensors' is truncated or not a safetensors file"),
])
def test_bad_inputs_are_one_line_errors_before_any_model_loads(trained, tmp_path, monkeypatch, args, damage,
                                                               message):
    import hf_transfer.run

    def no_loading(*_, **__):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(hf_transfer.run, "load_trained", no_loading)
    model = Path(trained["model"])
    if damage:
        model = shutil.copytree(model, tmp_path / "model")
        _damaged(damage, model)
    code, out, err = run_cli("evaluate", str(model), "--data", trained["data"], *args)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert out == ""


def test_progress_bar_on_a_terminal_unless_disabled(trained, capsys, monkeypatch):
    import hf_transfer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    hf_transfer.evaluate(trained["model"], trained["data"], bootstrap_resamples=0)
    assert "evaluating: 100%" in capsys.readouterr().err
    hf_transfer.evaluate(trained["model"], trained["data"], bootstrap_resamples=0, disable_tqdm=True)
    assert "evaluating" not in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_the_gpu_when_there_is_one(trained, monkeypatch):
    import hf_transfer
    import hf_transfer.run

    devices = []
    original = hf_transfer.run.load_trained

    def spy(*args, **kwargs):
        model, processor = original(*args, **kwargs)
        real_to = model.to

        def to(device, *a, **k):
            devices.append(torch.device(device).type)
            return real_to(device, *a, **k)

        model.to = to
        return model, processor

    monkeypatch.setattr(hf_transfer.run, "load_trained", spy)
    on_gpu = hf_transfer.evaluate(trained["model"], trained["data"], bootstrap_resamples=0)
    assert devices == ["cuda"]
    on_cpu = hf_transfer.evaluate(trained["model"], trained["data"], bootstrap_resamples=0, device="cpu")
    assert on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"])


def test_a_lora_adapter_is_evaluated_with_its_base_models_limits(trained, tiny_model_dir, tmp_path):
    import hf_transfer

    result = hf_transfer.train({
        "model_name_or_path": tiny_model_dir, "source_data": trained["data"], "target_data": trained["data"],
        "text_column": "review", "label_column": "stars", "max_length": 24, "output_dir": str(tmp_path / "lora"),
        "max_steps": 2, "per_device_train_batch_size": 8, "save_strategy": "no", "use_cpu": True,
        "disable_tqdm": True, "peft": {"peft_type": "LORA", "r": 2, "target_modules": ["query"]},
    })
    assert (result.output_dir / "adapter_config.json").is_file() and not (result.output_dir / "config.json").exists()
    code, out, err = run_cli("evaluate", str(result.output_dir), "--data", trained["data"])
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["max_length"] == 24
    assert evaluated["accuracy"] == pytest.approx(result.metrics["target_accuracy"])
    # the adapter folder has no config.json: the limit comes from its base model's
    code, out, err = run_cli("evaluate", str(result.output_dir), "--data", trained["data"], "--max_length", "129")
    assert code == 2 and "max_length: 129 is more than this model takes (128 tokens" in err
