"""The multi-label task (hf_transfer/tasks/multi_label_classification.py), end to end: label lists in, a plain
``AutoModelForSequenceClassification`` with ``problem_type="multi_label_classification"`` out; its loss against
transformers', its metrics against scikit-learn, its export reloaded in a fresh process and through ``pipeline``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_transfer.errors import DataError, RecipeError
from hf_transfer.recipe import load_recipe
from hf_transfer.tasks import get_task
from hf_transfer.tasks.multi_label_classification import REFUSED_METHODS, MultiLabelMetrics, multi_label_bce
from tests.conftest import REPO, read_jsonl, write_jsonl

DATA = REPO / "tests" / "data"
SOURCE, TARGET = str(DATA / "aspects_restaurants.jsonl"), str(DATA / "aspects_delivery.jsonl")
ASPECTS = ["food", "presentation", "price", "service"]  # sorted: the class order of a run without class_names


@pytest.fixture
def multi_label_recipe(tiny_recipe) -> dict:
    return {**tiny_recipe, "task": "multi-label-classification", "source_data": SOURCE, "target_data": TARGET,
            "label_column": "aspects", "metrics": ["accuracy", "micro_f1", "macro_f1"], "selection_validators": [],
            "max_steps": 6}


# ---- loss and metrics against the references ----------------------------------------------------------------------


def test_loss_is_transformers_bce(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=4,
                                                               problem_type="multi_label_classification").eval()
    torch.manual_seed(0)
    inputs = {"input_ids": torch.randint(5, 1000, (6, 9)), "attention_mask": torch.ones(6, 9, dtype=torch.long)}
    targets = (torch.rand(6, 4) > 0.5).float()
    reference = model(**inputs, labels=targets).loss  # BCEWithLogitsLoss, transformers' own
    logits = model(**inputs).logits
    assert torch.allclose(multi_label_bce(logits, targets, torch.ones(6)), reference, atol=1e-6)
    # Target rows (weight 0, labels -100) change nothing; weights average per-row losses.
    padded = torch.cat([targets, torch.full((3, 4), -100.0)])
    weights = torch.cat([torch.ones(6), torch.zeros(3)])
    assert torch.allclose(multi_label_bce(torch.cat([logits, torch.randn(3, 4)]), padded, weights), reference,
                          atol=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 0.0, 3.0])
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    assert torch.allclose(multi_label_bce(logits, targets, w), (per_row * w).sum() / w.sum(), atol=1e-6)


def test_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 5))
    labels = (rng.random((50, 5)) > 0.6).astype(np.float32)
    labels[:, 4] = 0  # a class that never occurs: scikit-learn scores it 0 in the macro average
    names = ["accuracy", "micro_f1", "macro_f1", "weighted_f1", "micro_precision", "macro_recall"]
    got = MultiLabelMetrics(names).compute(logits, labels)
    pred, true = (1 / (1 + np.exp(-logits)) > 0.5).astype(int), labels.astype(int)
    expected = {
        "accuracy": accuracy_score(true, pred),  # subset accuracy on indicator matrices
        "micro_f1": f1_score(true, pred, average="micro", zero_division=0),
        "macro_f1": f1_score(true, pred, average="macro", zero_division=0),
        "weighted_f1": f1_score(true, pred, average="weighted", zero_division=0),
        "micro_precision": precision_score(true, pred, average="micro", zero_division=0),
        "macro_recall": recall_score(true, pred, average="macro", zero_division=0),
    }
    assert got == pytest.approx(expected, abs=1e-12)
    # Rows labelled -100 (unlabelled) are left out.
    padded = np.concatenate([labels, np.full((7, 5), -100.0)])
    assert MultiLabelMetrics(names).compute(np.concatenate([logits, rng.normal(size=(7, 5))]), padded) == \
        pytest.approx(expected, abs=1e-12)


def test_bootstrap_intervals_bracket_the_value():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(80, 3)), (rng.random((80, 3)) > 0.5).astype(np.float32)
    suite = MultiLabelMetrics(["accuracy", "micro_f1"])
    values = suite.compute(logits, labels)
    intervals = suite.intervals(logits, labels, num_resamples=200, confidence=0.9, seed=0)
    for name, value in values.items():
        low, high = intervals[name]
        assert low <= value <= high and low < high
    assert intervals == suite.intervals(logits, labels, num_resamples=200, confidence=0.9, seed=0)  # seeded


# ---- data and recipe checks ----------------------------------------------------------------------------------------


def test_labels_as_names_and_as_ids(tmp_path, multi_label_recipe):
    from hf_transfer.data import load_raw_data

    raw = load_raw_data(load_recipe(multi_label_recipe).data)
    assert raw.labels.names == ASPECTS
    first = read_jsonl(Path(SOURCE))[0]
    assert raw.source.features["labels"].feature.dtype in ("float32", "float64")
    assert {ASPECTS[i] for i, v in enumerate(raw.source[0]["labels"]) if v == 1.0} == set(first["aspects"])
    ids = write_jsonl(tmp_path / "ids.jsonl", [{"text": "a", "labels": [0, 2]}, {"text": "b", "labels": []},
                                               {"text": "c", "labels": [1]}])
    raw = load_raw_data(load_recipe({**multi_label_recipe, "source_data": str(ids), "target_data": None,
                                     "label_column": "labels", "source_eval_fraction": 0}).data)
    assert raw.labels.names == ["0", "1", "2"]
    assert raw.source["labels"] == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_bad_labels_are_refused(tmp_path, multi_label_recipe):
    from hf_transfer.data import load_raw_data

    single = write_jsonl(tmp_path / "single.jsonl", [{"text": "a", "labels": 1}, {"text": "b", "labels": 0}])
    recipe = {**multi_label_recipe, "source_data": str(single), "target_data": None, "label_column": "labels"}
    with pytest.raises(DataError, match=r"row 0 has label 1; task multi-label-classification reads a list"):
        load_raw_data(load_recipe(recipe).data)
    unknown = write_jsonl(tmp_path / "target.jsonl", [{"text": "x", "aspects": ["food", "parking"]}])
    with pytest.raises(DataError, match=r"target_data .* row 0 has label 'parking'"):
        load_raw_data(load_recipe({**multi_label_recipe, "target_data": str(unknown)}).data)


@pytest.mark.parametrize("method", sorted(REFUSED_METHODS))
def test_single_label_methods_are_refused(multi_label_recipe, method):
    with pytest.raises(RecipeError, match=rf"^method: {method} is not available for task multi-label-classification"):
        load_recipe({**multi_label_recipe, "method": [method]})


def test_other_refusals(multi_label_recipe):
    with pytest.raises(RecipeError, match=r"^mmd.joint: .*task multi-label-classification"):
        load_recipe({**multi_label_recipe, "method": ["mmd"], "mmd": {"joint": True}})
    with pytest.raises(RecipeError, match=r"^metrics: 'binary_f1' is not a multi-label metric"):
        load_recipe({**multi_label_recipe, "metrics": ["binary_f1"]})
    with pytest.raises(RecipeError, match=r"^selection_validators: .*set selection_validators: \[\]"):
        load_recipe({**multi_label_recipe, "selection_validators": ["entropy"]})
    with pytest.raises(RecipeError, match=r"^streaming: not available for task multi-label-classification"):
        load_recipe({**multi_label_recipe, "streaming": True})
    for method in ("dann", "mmd", "coral"):  # feature alignment is accepted
        load_recipe({**multi_label_recipe, "method": [method]})


def test_shipped_recipes_load():
    for path in sorted((REPO / "recipes" / "multi_label_classification").glob("*.yaml")):
        recipe = load_recipe(str(path))
        assert recipe.data.resolved_task.name == "multi-label-classification"


# ---- end to end ----------------------------------------------------------------------------------------------------

FRESH_PROCESS = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
folder, texts = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
scores = pipeline("text-classification", model=folder, top_k=None)(texts)
print(json.dumps({"problem_type": model.config.problem_type, "logits": logits.tolist(), "scores": scores}))
"""


def test_train_export_reload_and_pipeline(multi_label_recipe):
    from sklearn.metrics import accuracy_score, f1_score

    import hf_transfer

    result = hf_transfer.train(multi_label_recipe)
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("target_accuracy", "target_micro_f1", "target_macro_f1", "source_micro_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert np.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    logged = [e["task_loss"] for e in result.trainer.state.log_history if "task_loss" in e]
    assert logged and all(v > 0 for v in logged)  # the BCE, not the zero single-label stand-in

    # The exported folder reloads in a process that never imports hf_transfer, with the same logits.
    texts = [r["text"] for r in read_jsonl(Path(TARGET))]
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), json.dumps(texts)], capture_output=True,
                          text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["problem_type"] == "multi_label_classification"
    model, tokenizer = result.model.eval().cpu(), result.tokenizer
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert np.allclose(fresh["logits"], logits.numpy(), atol=1e-5)
    # pipeline(top_k=None): every class, each scored with its own sigmoid.
    first = {s["label"]: s["score"] for s in fresh["scores"][0]}
    assert set(first) == set(ASPECTS)
    expected = dict(zip([model.config.id2label[i] for i in range(4)], torch.sigmoid(logits[0]).tolist()))
    assert first == pytest.approx(expected, abs=1e-5)

    # metrics.json's target scores are scikit-learn's on the exported model's predictions.
    true = np.array([[int(a in r["aspects"]) for a in ASPECTS] for r in read_jsonl(Path(TARGET))])
    pred = (logits.numpy() > 0).astype(int)
    assert metrics["target_accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert metrics["target_micro_f1"] == pytest.approx(f1_score(true, pred, average="micro", zero_division=0))
    assert metrics["target_macro_f1"] == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))

    # hf-transfer evaluate reads the task from recipe.yaml and gives the same figures.
    values = hf_transfer.evaluate(out, TARGET, bootstrap_resamples=20, disable_tqdm=True, device="cpu")
    for name in ("accuracy", "micro_f1", "macro_f1"):
        assert values[name] == pytest.approx(metrics[f"target_{name}"])
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "top_k=None" in card
    assert get_task("multi-label-classification").load_trained(out)[0].config.problem_type == \
        "multi_label_classification"


@pytest.mark.parametrize("method", ["dann", "mmd", "coral"])
def test_feature_alignment_trains(multi_label_recipe, method):
    import hf_transfer

    result = hf_transfer.train({**multi_label_recipe, "method": [method], "max_steps": 2, "logging_steps": 1})
    logs = [e for e in result.trainer.state.log_history if f"{method}/loss" in e]
    assert logs and all(np.isfinite(e[f"{method}/loss"]) and e["task_loss"] > 0 for e in logs)
