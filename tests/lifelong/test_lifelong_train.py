"""Lifelong training end to end on a tiny random BERT: every method, the matrix, the files, recipe errors."""

import json

import numpy as np
import pytest
import torch
import yaml

from hf_transfer.cli import main
from hf_transfer.errors import RecipeError
from hf_transfer.lifelong import train_lifelong
from hf_transfer.recipe import load_recipe


def _recipe(tiny_model_dir, review_files, tmp_path, **extra):
    return {
        "model_name_or_path": tiny_model_dir,
        "lifelong_method": "naive",
        "steps_per_task": 2,
        "tasks": [{"name": "books", "data": review_files["source"], "max_eval_samples": 16},
                  {"name": "kitchen", "data": review_files["target"], "max_eval_samples": 16}],
        "max_length": 32, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "learning_rate": 1e-3, "output_dir": str(tmp_path / "ll"), "use_cpu": True, "report_to": "none",
        "disable_tqdm": True, "logging_steps": 1,
        **extra,
    }


@pytest.mark.parametrize("method,extra", [
    ("naive", {"eval_future_tasks": True}),
    ("ewc", {"fisher_samples": 4}),
    ("replay", {"replay_size": 8}),
    ("adapter", {"peft": {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"]}}),
])
def test_methods_train_and_write_the_matrix(tiny_model_dir, review_files, tmp_path, method, extra, capsys):
    recipe = _recipe(tiny_model_dir, review_files, tmp_path, lifelong_method=method, **extra)
    if method == "naive":  # through the command line: `hf-transfer train` routes lifelong recipes
        path = tmp_path / "naive.yaml"
        path.write_text(yaml.safe_dump(recipe))
        assert main(["train", str(path)]) == 0
        assert "written to" in capsys.readouterr().out
    else:
        train_lifelong(recipe)
    out = tmp_path / "ll"
    saved = json.loads((out / "accuracy_matrix.json").read_text())
    assert saved["tasks"] == ["books", "kitchen"]
    m = np.array([[np.nan if v is None else v for v in row] for row in saved["matrix"]])
    assert np.isfinite(m[0, 0]) and np.isfinite(m[1]).all()
    assert np.isfinite(m[0, 1]) == (method == "naive")  # future tasks only when asked (never for adapters)
    assert (out / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forgetting"] == pytest.approx(m[0, 0] - m[1, 0])  # F_1 = R[0,0] - R[1,0]
    assert len(metrics["average_accuracy_per_step"]) == 2
    if method == "adapter":
        assert (out / "books" / "adapter_config.json").is_file()  # one adapter (and head) per task
        assert (out / "kitchen" / "adapter_config.json").is_file()
    else:
        assert (out / "config.json").is_file()
        assert m[1, 0] == m[0, 0]  # the books adapter and head did not change while kitchen trained


def test_recipe_errors(tiny_model_dir, review_files, tmp_path):
    base = _recipe(tiny_model_dir, review_files, tmp_path)
    assert load_recipe(base).lifelong.steps_per_task == 2
    with pytest.raises(RecipeError, match="lifelong_method: unknown value 'ewk'; did you mean 'ewc'"):
        load_recipe({**base, "lifelong_method": "ewk"})
    with pytest.raises(RecipeError, match="peft: used only with lifelong_method: adapter"):
        load_recipe({**base, "peft": {"r": 4}})
    with pytest.raises(RecipeError, match="at least two tasks"):
        load_recipe({**base, "tasks": base["tasks"][:1]})


def _pretrained(tiny_model_dir):
    from transformers import AutoModel

    return {k: v.clone() for k, v in AutoModel.from_pretrained(tiny_model_dir).state_dict().items()}


def _changed(model, before):
    state = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(state[f"bert.{k}"].cpu(), v)}


@pytest.mark.parametrize("method,plan,frozen,trained", [
    # trainable_layers holds for the whole sequence: embeddings and layer 0 never move.
    ("naive", {"trainable_layers": 1}, ("embeddings.", "encoder.layer.0."), ("encoder.layer.1.", "pooler.")),
    # gradual unfreezing starts again with each task: step 0 the head, step 1 the top layer (and the pooler).
    ("ewc", {"gradual_unfreezing_steps": 1, "fisher_samples": 4}, ("embeddings.", "encoder.layer.0."),
     ("encoder.layer.1.", "pooler.")),
    ("replay", {"freeze_backbone": True, "replay_size": 8}, ("embeddings.", "encoder.", "pooler."), ()),
])
def test_freezing_plans_hold_the_frozen_layers(tiny_model_dir, review_files, tmp_path, method, plan, frozen,
                                               trained):
    before = _pretrained(tiny_model_dir)
    result = train_lifelong(_recipe(tiny_model_dir, review_files, tmp_path, lifelong_method=method, **plan))
    changed = _changed(result.model, before)
    weights = {k for k in before if k.endswith(".weight")}
    assert not any(k.startswith(frozen) for k in changed)
    assert {k for k in weights if k.startswith(trained)} <= changed if trained else not changed
    head = dict(result.model.named_parameters())["classifier.weight"]
    assert head.requires_grad and result.metrics["average_accuracy"] >= 0


def test_layerwise_lr_decay_scales_each_layer(tiny_model_dir, review_files, tmp_path):
    result = train_lifelong(_recipe(tiny_model_dir, review_files, tmp_path, lifelong_method="l2sp",
                                    layerwise_lr_decay=0.5, lr_scheduler_type="constant"))
    lr_of = {id(p): g["lr"] for g in result.trainer.optimizer.param_groups for p in g["params"]}
    params = dict(result.model.named_parameters())
    # depth: embeddings 0, layer i -> i + 1, pooler 3 (the top): 1e-3 * 0.5 ** (3 - depth); the head 1e-3
    assert lr_of[id(params["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.5 ** 3)
    assert lr_of[id(params["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(1e-3 * 0.25)
    assert lr_of[id(params["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(params["classifier.weight"])] == pytest.approx(1e-3)


def test_freezing_plans_are_refused_with_adapters(tiny_model_dir, review_files, tmp_path):
    recipe = _recipe(tiny_model_dir, review_files, tmp_path, lifelong_method="adapter", freeze_backbone=True)
    with pytest.raises(RecipeError, match=r"^freeze_backbone: not used with lifelong_method: adapter, whose base"):
        train_lifelong(recipe)
    assert not (tmp_path / "ll").exists()
