import pytest

from hf_transfer.errors import RecipeError
from hf_transfer.recipe import DEFAULT_MODEL, load_recipe, parse_cli_overrides


def test_defaults_are_the_embedded_demo():
    recipe = load_recipe()
    assert recipe.model.model_name_or_path == DEFAULT_MODEL
    assert recipe.methods.method == ["finetune"]
    assert recipe.data.source_data.endswith("amazon_books_demo.jsonl")


def test_yaml_and_cli_overrides_share_converters(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("learning_rate: 3.0e-5\nmax_steps: 10\nmethod: finetune\nmax_length: 64\n")
    recipe = load_recipe(path, ["--learning_rate", "1e-4", "--max_length=32", "--bf16", "false"])
    assert recipe.training.learning_rate == pytest.approx(1e-4)
    assert recipe.training.max_steps == 10
    assert recipe.data.max_length == 32
    assert recipe.training.bf16 is False
    # YAML 1.1 reads "3e-5" as a string; the converter still makes it a float
    assert load_recipe({"learning_rate": "3e-5"}).training.learning_rate == pytest.approx(3e-5)


def test_unknown_key_names_the_nearest():
    with pytest.raises(RecipeError, match=r"learnin_rate: unknown recipe field; did you mean 'learning_rate'"):
        load_recipe({"learnin_rate": 1e-4})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"max_steps": "ten"}, r"max_steps: expected int, got 'ten'"),
        ({"freeze_backbone": "maybe"}, r"freeze_backbone: expected true/false, got 'maybe'"),
        ({"max_length": 0}, r"max_length: must be > 0"),
        ({"lr_scheduler_type": "linaer"}, r"lr_scheduler_type: unknown value 'linaer'; did you mean 'linear'"),
        ({"method": "dan"}, r"method: unknown value 'dan'"),
        ({"freeze_backbone": True, "trainable_layers": 2}, r"choose one freezing plan"),
        ({"max_steps": [1, 2]}, r"max_steps: expected a single value"),
    ],
)
def test_bad_values_name_the_field(bad, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(bad)


def test_malformed_yaml_says_where(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 1e-4\n  max_steps: [1\n")
    with pytest.raises(RecipeError, match=r"malformed YAML at line \d+"):
        load_recipe(path)


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match=r"recipe 'nope.yaml': file not found"):
        load_recipe("nope.yaml")


def test_cli_tokens():
    assert parse_cli_overrides(["--a", "1", "--b", "x", "y", "--flag", "--peft.r=16"]) == {
        "a": "1",
        "b": ["x", "y"],
        "flag": "true",
        "peft.r": "16",
    }
    with pytest.raises(RecipeError, match="has no --field before it"):
        parse_cli_overrides(["oops"])


def test_peft_block_is_validated_and_overridable():
    recipe = load_recipe({"peft": {"peft_type": "LORA", "r": 4, "target_modules": ["query"]}}, ["--peft.r", "16"])
    assert recipe.peft["r"] == 16 and recipe.peft["task_type"] == "SEQ_CLS"
    with pytest.raises(RecipeError, match=r"peft.lora_alfa: not a field of LoraConfig; did you mean peft.lora_alpha"):
        load_recipe({"peft": {"peft_type": "LORA", "lora_alfa": 4}})
    with pytest.raises(RecipeError, match=r"peft.peft_type: unknown PEFT method 'LORRA'"):
        load_recipe({"peft": {"peft_type": "LORRA"}})


def test_method_blocks_need_their_method():
    with pytest.raises(RecipeError, match=r"finetune.trade_of: unknown field of method 'finetune'"):
        load_recipe({"method": "finetune", "finetune": {"trade_of": 1}})


def test_resolved_recipe_round_trips_and_hides_tokens(tmp_path):
    recipe = load_recipe({"max_steps": 7, "hub_token": "hf_secret", "output_dir": str(tmp_path)})
    text = recipe.to_yaml()
    assert "hf_secret" not in text and "hub_token" not in text
    path = tmp_path / "again.yaml"
    path.write_text(text)
    again = load_recipe(path)
    assert again.to_dict() == recipe.to_dict()
    assert again.training.max_steps == 7
