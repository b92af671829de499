"""Model cards: every family's card parses with huggingface_hub.ModelCard, its model-index holds the values of
metrics.json, base_model is a Hub id, the license is inherited, and no local absolute path leaks into it; the
Trainer's trainer_state.json / all_results.json sit beside the model."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load

import hf_transfer
from hf_transfer.backbones import resolve_model_path
from hf_transfer.cards import EvalSet, display_path, portable_recipe_yaml, transfer_card
from hf_transfer.recipe import DEFAULT_SOURCE, DEFAULT_TARGET
from tests.vision.conftest import digits_npz, image_recipe, tiny_vit_dir  # noqa: F401 (fixtures)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ABSOLUTE = re.compile(r"(?<![\w.:/~-])/[\w.@+-]+(?:/[\w.@+-]+)+")


def assert_nothing_local(text: str, *folders: str | Path) -> None:
    """No absolute path that exists on this machine, no site-packages, none of ``folders`` (tmp, home, cwd)."""
    for path in ABSOLUTE.findall(text):
        assert not os.path.exists(path), f"local path {path!r} in the card"
    assert "site-packages" not in text
    for folder in (*folders, os.getcwd(), str(Path.home())):
        assert str(folder) not in text, f"{folder} in the card"


def model_index(card: ModelCard) -> dict[str, dict[str, float]]:
    """``{dataset name: {metric name: value}}`` from the card's parsed model-index."""
    (entry,) = card.data.to_dict()["model-index"]
    return {r["dataset"]["name"]: {m["name"]: m["value"] for m in r["metrics"]} for r in entry["results"]}


def results_by_role(card: ModelCard) -> dict[str, dict]:
    """The model-index results keyed by the role in their dataset name (``source``, ``books`` ...)."""
    (entry,) = card.data.to_dict()["model-index"]
    return {re.search(r"\((\w+)", r["dataset"]["name"]).group(1): r for r in entry["results"]}


def metric(result: dict, metric_type: str, **args) -> float:
    (value,) = [m["value"] for m in result["metrics"] if m["type"] == metric_type and (m.get("args") or {}) == args]
    return value


@pytest.fixture
def licensed_tiny_model(tiny_model_dir, tmp_path) -> str:
    """The tiny BERT copied into a folder whose own card says ``license: mit``."""
    folder = tmp_path / "licensed-tiny-bert"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n\n# a tiny test model\n")
    return str(folder)


# ---------------------------------------------------------------------------------------------------------------
# The builder alone
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [MINILM, "packaged copy"])
def test_packaged_base_model_is_named_by_its_hub_id_and_its_license_inherited(given):
    base = resolve_model_path(MINILM) if given == "packaged copy" else MINILM
    assert "site-packages" in resolve_model_path(MINILM)  # the copy this test is about
    upstream = metadata_load(Path(resolve_model_path(MINILM)) / "README.md")
    metrics = {"source_accuracy": 0.75, "source_macro_f1": 0.7, "source_loss": 0.5, "target_accuracy": 0.625}
    text = transfer_card(
        base_model=base, methods=["dann"], metrics=metrics, recipe_yaml=f"model_name_or_path: {base}\n",
        evaluations=[EvalSet("source", "stanfordnlp/imdb", {"accuracy": 0.75, "macro_f1": 0.7, "loss": 0.5},
                             split="test"),
                     EvalSet("target", "reviews.jsonl", {"accuracy": 0.625})],
        data=[("source (labelled)", "stanfordnlp/imdb"), ("target (unlabelled)", "reviews.jsonl")],
        peft_type="LORA",
    )
    card = ModelCard(text)
    meta = card.data.to_dict()
    assert meta["base_model"] == MINILM
    assert meta["license"] == upstream["license"]  # apache-2.0, read from the packaged upstream card
    assert meta["datasets"] == ["stanfordnlp/imdb"]  # Hub ids only
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert {"hf-transfer", "dann", "lora"} <= set(meta["tags"])
    roles = results_by_role(card)
    assert roles["source"]["dataset"]["type"] == "stanfordnlp/imdb" and roles["source"]["dataset"]["split"] == "test"
    assert metric(roles["source"], "accuracy") == 0.75 and metric(roles["source"], "f1", average="macro") == 0.7
    assert metric(roles["target"], "accuracy") == 0.625
    assert not any(m["type"] == "loss" for r in roles.values() for m in r["metrics"])  # losses are not scores
    assert "AutoPeftModelForSequenceClassification.from_pretrained" in text
    assert_nothing_local(text)


def test_image_card_and_its_adapter_snippet():
    text = transfer_card(
        base_model="google/vit-base-patch16-224", methods=["finetune"], metrics={"target_accuracy": 0.5},
        recipe_yaml="image_column: image\n", evaluations=[EvalSet("target", "ylecun/mnist", {"accuracy": 0.5},
                                                                  task_type="image-classification")],
        data=[("target", "ylecun/mnist")], peft_type="LORA", pipeline_tag="image-classification",
    )
    meta = ModelCard(text).data.to_dict()
    assert meta["pipeline_tag"] == "image-classification" and meta["base_model"] == "google/vit-base-patch16-224"
    assert meta["model-index"][0]["results"][0]["task"]["type"] == "image-classification"
    assert "license" not in meta  # not at hand offline: left unset rather than guessed
    assert "PeftModel.from_pretrained(base" in text and "AutoModelForImageClassification" in text


def test_paths_are_relative_or_file_names_and_the_saved_recipe_reruns(tmp_path, monkeypatch):
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    inside = work / "data" / "books.jsonl"
    outside = tmp_path / "elsewhere" / "kitchen.jsonl"
    monkeypatch.chdir(work)
    assert display_path(str(inside)) == "data/books.jsonl"
    assert display_path(str(outside)) == "kitchen.jsonl"
    assert display_path(DEFAULT_SOURCE) == "amazon_books_demo.jsonl"
    assert display_path(resolve_model_path(MINILM)) == MINILM
    assert display_path("stanfordnlp/imdb") == "stanfordnlp/imdb"

    home_file = Path.home() / "hf-transfer-card-test" / "reviews.jsonl"
    recipe = yaml.safe_dump({
        "source_data": DEFAULT_SOURCE, "target_data": DEFAULT_TARGET, "eval_data": str(inside),
        "output_dir": str(outside.parent / "out"), "model_name_or_path": resolve_model_path(MINILM),
        "tasks": [{"name": "a", "data": str(home_file)}, {"name": "b", "data": "../elsewhere/kitchen.jsonl"}]},
        sort_keys=False)
    public = portable_recipe_yaml(recipe, public=True)
    assert_nothing_local(public, tmp_path)
    shown = yaml.safe_load(public)
    assert shown["eval_data"] == "data/books.jsonl" and shown["output_dir"] == "out"
    assert shown["model_name_or_path"] == MINILM and shown["tasks"][0]["data"] == "reviews.jsonl"
    assert shown["tasks"][1]["data"] == "kitchen.jsonl"  # outside the working folder, even when relative

    saved = yaml.safe_load(portable_recipe_yaml(recipe, public=False))
    assert "source_data" not in saved and "target_data" not in saved  # the packaged defaults, wherever installed
    assert saved["eval_data"] == "data/books.jsonl"  # relative to the working folder: reruns from here
    assert saved["output_dir"] == str(outside.parent / "out")  # outside: kept, a rerun needs it
    assert saved["tasks"][0]["data"] == "~/hf-transfer-card-test/reviews.jsonl"  # no user name
    assert saved["model_name_or_path"] == MINILM and saved["tasks"][1]["data"] == "../elsewhere/kitchen.jsonl"
    rerun = hf_transfer.load_recipe({k: v for k, v in saved.items() if k != "tasks"})
    assert rerun.data.source_data == DEFAULT_SOURCE and rerun.data.target_data == DEFAULT_TARGET
    assert portable_recipe_yaml("max_steps: 4\n", public=True) == "max_steps: 4\n"  # nothing to rewrite


# ---------------------------------------------------------------------------------------------------------------
# Every family, end to end on tiny models
# ---------------------------------------------------------------------------------------------------------------


def test_transfer_card_and_trainer_state(licensed_tiny_model, tiny_recipe, tmp_path):
    result = hf_transfer.train({**tiny_recipe, "model_name_or_path": licensed_tiny_model})
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "mit"  # from the local base model's own card
    assert "base_model" not in meta  # a local folder is not a Hub id
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "transformers"
    roles = results_by_role(card)
    assert set(roles) == {"source", "target"}
    for role in ("source", "target"):
        assert metric(roles[role], "accuracy") == metrics[f"{role}_accuracy"]
        assert metric(roles[role], "f1", average="macro") == metrics[f"{role}_macro_f1"]
    assert roles["source"]["dataset"]["type"] == "books.jsonl" and roles["target"]["dataset"]["split"] == "train"
    assert "pipeline(\"text-classification\"" in text
    assert_nothing_local(text, tmp_path, licensed_tiny_model)

    # the Trainer's files: the loss curve survives save_strategy: no
    assert tiny_recipe["save_strategy"] == "no" and not list(out.glob("checkpoint-*"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert state["log_history"] == json.loads(json.dumps(result.trainer.state.log_history))
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [2, 4]  # logging_steps: 2
    assert json.loads((out / "all_results.json").read_text()) == metrics


def test_image_transfer_card(tiny_vit_dir, image_recipe, tmp_path):  # noqa: F811 (fixtures)
    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir})
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    card = ModelCard.load(result.output_dir / "README.md")
    meta = card.data.to_dict()
    assert meta["pipeline_tag"] == "image-classification"
    roles = results_by_role(card)
    assert roles["target"]["task"]["type"] == "image-classification"
    assert roles["target"]["dataset"]["config"] == "usps" and roles["source"]["dataset"]["config"] == "mnist"
    assert metric(roles["target"], "accuracy") == metrics["target_accuracy"]
    assert_nothing_local(card.content, tmp_path, tiny_vit_dir)


def test_multitask_cards_whole_and_per_task(licensed_tiny_model, review_files, tmp_path):
    result = hf_transfer.train({
        "model_name_or_path": licensed_tiny_model, "max_length": 32, "output_dir": str(tmp_path / "mtl"),
        "max_steps": 2, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 32, "save_strategy": "no",
        "logging_steps": 1, "use_cpu": True, "disable_tqdm": True, "report_to": "none",
        "tasks": [{"name": "books", "data": review_files["source"]},
                  {"name": "kitchen", "data": review_files["target"], "eval_data": review_files["target"]}],
    })
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    whole = ModelCard.load(out / "README.md")
    assert whole.data.to_dict()["license"] == "mit"
    roles = results_by_role(whole)
    for task in ("books", "kitchen"):
        assert metric(roles[task], "accuracy") == metrics[f"{task}/accuracy"]
        assert metric(roles[task], "f1", average="macro") == metrics[f"{task}/macro_f1"]
        own = json.loads((out / "tasks" / task / "metrics.json").read_text())
        single = ModelCard.load(out / "tasks" / task / "README.md")
        (result_,) = single.data.to_dict()["model-index"][0]["results"]
        assert metric(result_, "accuracy") == own["accuracy"] == metrics[f"{task}/accuracy"]
        assert single.data.to_dict()["pipeline_tag"] == "text-classification"
        assert_nothing_local(single.content, tmp_path)
    assert roles["kitchen"]["dataset"]["type"] == "kitchen.jsonl"
    assert_nothing_local(whole.content, tmp_path)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_meta_card(licensed_tiny_model, review_files, tmp_path):
    from hf_transfer.meta import train_meta

    train_meta({
        "model_name_or_path": licensed_tiny_model, "meta_method": "protonet", "n_way": 2, "k_shot": 2,
        "n_query": 3, "tasks": [{"name": "books", "data": review_files["source"]}],
        "test_tasks": [{"name": "kitchen", "data": review_files["target"], "eval_fraction": 0.5}],
        "eval_shots": [2], "eval_episodes": 3, "eval_n_query": 4, "max_length": 32, "max_steps": 2,
        "learning_rate": 1e-3, "logging_steps": 1, "output_dir": str(tmp_path / "meta"), "use_cpu": True,
    })
    out = tmp_path / "meta"
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["pipeline_tag"] == "feature-extraction" and meta["license"] == "mit"
    roles = results_by_role(card)
    assert set(roles) == {"kitchen"}  # the held-out test task
    assert metric(roles["kitchen"], "accuracy", shots=2) == metrics["kitchen/2shot_accuracy"]
    assert f"{metrics['kitchen/2shot_ci95']:.4f}" in roles["kitchen"]["metrics"][0]["name"]
    assert_nothing_local(card.content, tmp_path)


@pytest.mark.parametrize("method,extra", [("naive", {}), ("adapter", {"peft": {"r": 2, "lora_alpha": 4,
                                                                              "target_modules": ["query"]}})])
def test_lifelong_card(licensed_tiny_model, review_files, tmp_path, method, extra):
    from hf_transfer.lifelong import train_lifelong

    train_lifelong({
        "model_name_or_path": licensed_tiny_model, "lifelong_method": method, "steps_per_task": 2,
        "tasks": [{"name": "books", "data": review_files["source"], "max_eval_samples": 16},
                  {"name": "kitchen", "data": review_files["target"], "max_eval_samples": 16}],
        "max_length": 32, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "learning_rate": 1e-3, "output_dir": str(tmp_path / "ll"), "use_cpu": True, "report_to": "none",
        "disable_tqdm": True, **extra,
    })
    out = tmp_path / "ll"
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == ("peft" if method == "adapter" else "transformers")
    assert meta["license"] == "mit"
    roles = results_by_role(card)
    for task in ("books", "kitchen"):
        assert metric(roles[task], "accuracy") == metrics[f"{task}/final_accuracy"]
    assert "forgetting" in card.content
    assert_nothing_local(card.content, tmp_path)
