"""The checks of hf_transfer.preflight (machine and model config, before any data is read) and the value checks of
the recipe loader, unit by unit. The end-to-end table of bad inputs is tests/test_hostile_inputs.py."""

from __future__ import annotations

import math

import pytest
import torch

from hf_transfer.errors import RecipeError
from hf_transfer.preflight import check_max_length, check_mixed_precision, check_report_to, position_limit
from hf_transfer.recipe import BareFlag, check_peft_values, load_recipe, parse_cli_overrides, redact


def _fits(model: torch.nn.Module, length: int) -> bool:
    """Whether a forward pass over ``length`` tokens runs: the reference position_limit must agree with."""
    try:
        with torch.no_grad():
            model(input_ids=torch.full((1, length), 5), attention_mask=torch.ones(1, length, dtype=torch.long))
        return True
    except (IndexError, RuntimeError):
        return False


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_position_limit_is_the_longest_input_the_model_runs(kind):
    """BERT's positions hold max_position_embeddings tokens; RoBERTa's start after the padding id, so
    pad_token_id + 1 fewer fit. Checked against a forward pass of a tiny random model of each kind."""
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    small = dict(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                 max_position_embeddings=12)
    config = BertConfig(**small) if kind == "bert" else RobertaConfig(**small, pad_token_id=1)
    model = (BertModel if kind == "bert" else RobertaModel)(config).eval()
    limit = position_limit(config)
    assert limit == (12 if kind == "bert" else 10)
    assert _fits(model, limit) and not _fits(model, limit + 1)


def test_models_without_absolute_positions_have_no_limit():
    from transformers import DebertaV2Config

    assert position_limit(DebertaV2Config(position_biased_input=False, max_position_embeddings=512)) is None


def test_max_length_is_checked_against_the_packaged_minilm_config():
    """The default model (the packaged MiniLM: 512 positions), read from its config.json alone."""
    check_max_length("sentence-transformers/all-MiniLM-L6-v2", 512)
    with pytest.raises(RecipeError, match=r"^max_length: 513 tokens, but .* has positions for 512; set max_length"):
        check_max_length("sentence-transformers/all-MiniLM-L6-v2", 513)


def test_train_refuses_max_length_before_reading_data(tiny_model_dir, tmp_path, monkeypatch):
    """Through the Python API: the error comes before any data is read (the source does not even exist)."""
    import hf_transfer.run
    from hf_transfer import train

    monkeypatch.setattr(hf_transfer.run, "load_raw_data", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(RecipeError, match=r"^max_length: 4096 tokens, but .* has positions for 128"):
        train({"model_name_or_path": tiny_model_dir, "source_data": str(tmp_path / "none.jsonl"),
               "max_length": 4096, "output_dir": str(tmp_path / "out"), "max_steps": 1})


@pytest.mark.parametrize("family_keys", [{"sharing": "hard"}, {"lifelong_method": "naive"}])
def test_task_list_recipes_get_the_same_model_checks(family_keys, tiny_model_dir, tmp_path):
    """Every family shares the preflight: a multi-task or lifelong recipe with a max_length beyond the model's
    positions is refused before its task files are read (they do not exist)."""
    from hf_transfer import train

    tasks = [{"name": n, "data": str(tmp_path / f"{n}.jsonl")} for n in ("books", "dvd")]
    with pytest.raises(RecipeError, match=r"^max_length: 4096 tokens, but .* has positions for 128"):
        train({"model_name_or_path": tiny_model_dir, "tasks": tasks, "max_length": 4096,
               "output_dir": str(tmp_path / "out"), **family_keys})


def test_fp16_needs_an_accelerator(monkeypatch):
    import hf_transfer.preflight as preflight

    args = load_recipe({"fp16": True, "use_cpu": False}).training
    monkeypatch.setattr(preflight, "has_accelerator", lambda: False)
    with pytest.raises(RecipeError, match=r"^fp16: needs a GPU, and this machine has no GPU"):
        check_mixed_precision(args)
    monkeypatch.setattr(preflight, "has_accelerator", lambda: True)
    check_mixed_precision(args)  # a GPU machine: fine
    check_mixed_precision(load_recipe({"bf16": True, "use_cpu": True}).training)  # bf16 runs on the CPU


def test_report_to_names_must_be_installed(monkeypatch):
    import transformers.integrations.integration_utils as integrations

    args = load_recipe({"report_to": "tensorboard"}).training
    monkeypatch.setattr(integrations, "get_available_reporting_integrations", lambda: [])
    with pytest.raises(RecipeError, match=r"^report_to: 'tensorboard' is not installed here"):
        check_report_to(args)
    monkeypatch.setattr(integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    check_report_to(args)
    check_report_to(load_recipe({"report_to": "none"}).training)


@pytest.mark.parametrize(("block", "message"), [
    ({"r": "abc"}, r"peft\.r: expected int, got 'abc'"),
    ({"r": True}, r"peft\.r: expected int, got True"),
    ({"r": 0}, r"peft\.r: must be >= 1"),
    ({"r": -4}, r"peft\.r: must be >= 1"),
    ({"lora_alpha": [1]}, r"peft\.lora_alpha: expected int"),
    ({"lora_dropout": 1.5}, r"peft\.lora_dropout: must be in \[0, 1\)"),
    ({"use_rslora": 2}, r"peft\.use_rslora: expected bool"),
    ({"bias": "some"}, r"peft\.bias: expected Literal"),
    ({"target_modules": 3}, r"peft\.target_modules: expected"),
])
def test_peft_values_of_the_wrong_type_or_range(block, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"peft": {"peft_type": "LORA", **block}})


def test_valid_peft_blocks_pass():
    check_peft_values({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "bias": "none",
                       "target_modules": ["query", "value"], "init_lora_weights": "pissa_niter_4",
                       "layers_to_transform": 1, "task_type": "SEQ_CLS"})


@pytest.mark.parametrize("value", [0.0, 2e-5, 1])
def test_ordinary_learning_rates_pass(value):
    assert math.isclose(load_recipe({"learning_rate": value}).training.learning_rate, value)


def test_mapping_fields_still_take_mappings():
    recipe = load_recipe({"lr_scheduler_type": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2}})
    assert recipe.training.lr_scheduler_kwargs == {"num_cycles": 2}


def test_a_bare_flag_is_true_for_booleans_and_refused_elsewhere():
    overrides = parse_cli_overrides(["--bf16", "--output_dir"])
    assert isinstance(overrides["bf16"], BareFlag) and overrides["bf16"] == "true"
    with pytest.raises(RecipeError, match=r"^output_dir: needs a value"):
        load_recipe(None, overrides)
    assert load_recipe(None, {"output_dir": "true"}).training.output_dir == "true"  # written out, it is a name


def test_redact_hides_every_secret_value():
    hidden = redact("got ['hf_A', 'hf_B'] and hf_A", [["hf_A", "hf_B"], None])
    assert hidden == "got ['<hidden>', '<hidden>'] and <hidden>"


def test_stray_value_after_a_secret_is_not_echoed():
    with pytest.raises(RecipeError) as info:
        parse_cli_overrides(["--hub_token=hf_SECRET1", "hf_SECRET2"])
    assert "hf_SECRET" not in str(info.value) and "has no --field before it" in str(info.value)


def test_num_labels_and_class_names_must_agree():
    with pytest.raises(RecipeError, match=r"^class_names: 3 names for num_labels=2"):
        load_recipe({"num_labels": 2, "class_names": ["a", "b", "c"]})
