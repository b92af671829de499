"""The transfer methods on AutoModelForImageClassification: tiny random ViT / ResNet built from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hf_transfer
from hf_transfer.backbones import find_feature_module, freeze_batchnorm_statistics, load_classifier
from hf_transfer.errors import RecipeError


def _pipeline_predicts(model_dir: str) -> list[dict]:
    from PIL import Image
    from transformers import pipeline

    classifier = pipeline("image-classification", model=model_dir)
    grey = Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype("uint8"))
    return classifier(grey, top_k=10)


def test_finetune_tiny_vit_exports_a_pipeline_model(tiny_vit_dir, image_recipe):
    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir})
    assert result.metrics["train_steps"] == 2
    assert 0.0 <= result.metrics["target_accuracy"] <= 1.0
    predictions = _pipeline_predicts(str(result.output_dir))
    assert {p["label"] for p in predictions} == {str(i) for i in range(10)}
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-4
    card = (result.output_dir / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and 'pipeline("image-classification"' in card
    # the exported folder, evaluated on its own, scores what the trainer measured on the same target rows
    metrics = hf_transfer.evaluate(result.output_dir, image_recipe["target_data"], image_column="image",
                                   config="usps")
    assert metrics["num_examples"] == 40
    assert metrics["accuracy"] == pytest.approx(result.metrics["target_accuracy"])
    # and the same from the command line
    import contextlib
    import io
    import json

    from hf_transfer.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", str(result.output_dir), "--data", image_recipe["target_data"], "--image_column",
                     "image", "--config", "usps"]) == 0
    assert json.loads(out.getvalue())["accuracy"] == pytest.approx(metrics["accuracy"])


def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_statistics(tiny_resnet_dir, image_recipe):
    before = load_classifier(tiny_resnet_dir, num_labels=10, image=True).state_dict()
    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_resnet_dir, "freeze_backbone": True,
                                "target_data": None})
    after = result.model.state_dict()
    changed = {k for k in after if k in before and before[k].shape == after[k].shape
               and not torch.equal(before[k], after[k].cpu())}
    # only the new head moved: backbone weights and batch-norm running statistics are exactly as loaded
    assert changed == {"classifier.1.weight", "classifier.1.bias"}
    assert any("running_mean" in k for k in before)
    assert result.metrics["trainable_parameters"] == 16 * 10 + 10


def test_batchnorm_statistics_follow_the_freezing_plan(tiny_resnet_dir):
    model = load_classifier(tiny_resnet_dir, num_labels=3, image=True)
    freeze_batchnorm_statistics(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for p in model.resnet.embedder.parameters():
        p.requires_grad_(False)
    model.train()
    model(pixel_values=torch.randn(2, 3, 32, 32))
    frozen = [m for m in model.resnet.embedder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen and all(not m.training for m in frozen)
    assert all(m.training for m in bns if m not in frozen)


@pytest.mark.parametrize("fixture, feature_dim", [("tiny_vit_dir", 32), ("tiny_resnet_dir", 16)])
def test_feature_tap_finds_the_head_input(request, fixture, feature_dim):
    model = load_classifier(request.getfixturevalue(fixture), num_labels=7, image=True)
    name, module = find_feature_module(model, 7)
    assert module.in_features == feature_dim and name.startswith("classifier")


def test_dann_one_step_on_tiny_resnet_with_label_free_selection(tiny_resnet_dir, image_recipe):
    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_resnet_dir, "method": ["dann"],
                                "max_steps": 1, "eval_strategy": "steps", "eval_steps": 1,
                                "selection_validators": ["iwv", "dev", "snd", "entropy"]})
    history = result.trainer.state.log_history
    logged = [h for h in history if "dann/domain_loss" in h]
    assert logged and np.isfinite(logged[0]["dann/domain_loss"])
    # the validators ran on image batches (source features, target features and logits through the image collator)
    scores = {k for h in history for k in h if k.startswith("eval_") and k[5:] in ("iwv", "dev", "snd", "entropy")}
    assert scores == {"eval_iwv", "eval_dev", "eval_snd", "eval_entropy"}


def test_mmd_with_a_frozen_vit_backbone_runs(tiny_vit_dir, image_recipe):
    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir, "method": ["mmd"],
                                "trainable_layers": 1, "max_steps": 1})
    assert any("mmd/loss" in h for h in result.trainer.state.log_history)


def test_lora_on_tiny_vit_saves_an_adapter_and_a_merged_pipeline_model(tiny_vit_dir, image_recipe):
    from pathlib import Path

    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir, "merge_adapter": True,
                                "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}})
    out = Path(result.output_dir)
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert len(_pipeline_predicts(str(out / "merged"))) == 10


def test_instance_weighting_on_images_weights_each_source_image_by_its_head_features(tiny_vit_dir, image_recipe):
    from hf_transfer.methods.instance_weighting import WEIGHTS_FILE, embed

    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir, "method": "instance_weighting",
                                "instance_weighting.estimator": "nearest_neighbors"})
    weights = np.load(result.output_dir / WEIGHTS_FILE)
    train = result.trainer.train_dataset
    assert len(weights) == len(train) and weights.mean() == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(train["sample_weight"], weights, rtol=1e-6)
    # the features weighed are the head inputs of the images (a mean-pool over tokens does not apply to images)
    features = embed(result.model, train.select(range(4)), result.trainer.data_collator, kind="mean",
                     batch_size=4, device="cpu", desc="test")
    assert features.shape == (4, result.model.config.hidden_size)


def test_hidden_layer_is_refused_for_models_without_it(tiny_vit_dir, image_recipe):
    with pytest.raises(RecipeError, match="classifier_hidden_size: not supported by ViTConfig"):
        hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir, "classifier_hidden_size": 8})
    with pytest.raises(RecipeError, match="image_size: ViTConfig .* takes 32x32 inputs"):
        hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir, "image_size": 64})
