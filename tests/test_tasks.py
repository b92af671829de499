"""The task registry (hf_transfer/tasks): which task a recipe and a saved folder are, and what each task answers."""

from __future__ import annotations

import pytest
import torch

import hf_transfer.run
from hf_transfer.errors import RecipeError
from hf_transfer.recipe import load_recipe
from hf_transfer.tasks import (
    MethodRows,
    Task,
    available_tasks,
    get_task,
    load_trained,
    register_task,
    task_for_folder,
)
from hf_transfer.tasks import registry as task_registry


def test_registered_tasks():
    assert available_tasks() == ["audio-classification", "image-classification", "multi-label-classification",
                                 "text-classification", "token-classification"]
    text, image = get_task("text-classification"), get_task("image-classification")
    assert (text.pipeline_tag, text.auto_class_name, text.peft_task_type) == \
        ("text-classification", "AutoModelForSequenceClassification", "SEQ_CLS")
    assert (image.pipeline_tag, image.auto_class_name, image.peft_task_type) == \
        ("image-classification", "AutoModelForImageClassification", None)
    assert get_task("multi-label-classification").config_fields == {"problem_type": "multi_label_classification"}


def test_recipe_task_is_given_or_inferred():
    assert load_recipe({}).data.task is None
    assert load_recipe({}).data.resolved_task.name == "text-classification"
    assert load_recipe({"image_column": "image"}).data.resolved_task.name == "image-classification"
    assert load_recipe({"task": "multi-label-classification", "target_data": None}).data.resolved_task.name == \
        "multi-label-classification"
    with pytest.raises(RecipeError, match=r"^task: unknown task 'image-clasification'; did you mean "
                                          r"'image-classification'\?"):
        load_recipe({"task": "image-clasification"})
    with pytest.raises(RecipeError, match=r"^image_column: task image-classification reads images; set image_column"):
        load_recipe({"task": "image-classification"})
    with pytest.raises(RecipeError, match=r"^image_column: task text-classification reads text_column"):
        load_recipe({"task": "text-classification", "image_column": "image"})


def test_peft_task_type_comes_from_the_task():
    block = {"peft_type": "LORA", "r": 2, "target_modules": ["query"]}
    assert load_recipe({"peft": block}).peft["task_type"] == "SEQ_CLS"
    assert "task_type" not in load_recipe({"peft": block, "image_column": "image"}).peft
    assert load_recipe({"peft": {**block, "task_type": "SEQ_CLS"}, "image_column": "image"}).peft["task_type"] == \
        "SEQ_CLS"  # an explicit value stays


def test_folder_task(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    assert task_for_folder(folder).name == "text-classification"
    (folder / "preprocessor_config.json").write_text("{}")
    assert task_for_folder(folder).name == "image-classification"  # older exports: the processor tells
    (folder / "recipe.yaml").write_text("task: multi-label-classification\nimage_column: null\n")
    assert task_for_folder(folder).name == "multi-label-classification"
    (folder / "recipe.yaml").write_text("task: null\nimage_column: image\n")
    assert task_for_folder(folder).name == "image-classification"
    (folder / "recipe.yaml").write_text("task: nonsense\n")
    with pytest.raises(RecipeError, match=r"^task \(in '.*recipe.yaml'\): unknown task 'nonsense'"):
        task_for_folder(folder)


def test_old_import_paths_still_work():
    from hf_transfer.tasks import loading, registry

    assert hf_transfer.run.load_trained is load_trained is registry.load_trained
    assert hf_transfer.run.CLASSIFIER_CONFIG == "classifier_config.json"
    assert hf_transfer.run.save_classifier_config is loading.save_classifier_config


def test_sequence_rows_are_the_examples():
    logits, features = torch.randn(4, 3), torch.randn(4, 8)
    labels, domain = torch.tensor([0, 2, -100, -100]), torch.tensor([0, 0, 1, 1])
    rows = get_task("text-classification").method_rows(logits=logits, features=features, labels=labels,
                                                       domain=domain)
    assert isinstance(rows, MethodRows)
    assert rows.logits is logits and rows.features is features and rows.labels is labels and rows.domain is domain


def test_card_fields_follow_the_task():
    text = get_task("text-classification").card_fields(peft_type=None, hub_model_id="me/m")
    image = get_task("image-classification").card_fields(peft_type="LORA", hub_model_id="me/m", id2label={0: "a"})
    multi = get_task("multi-label-classification").card_fields(peft_type=None, hub_model_id="me/m")
    assert text["pipeline_tag"] == "text-classification" and 'pipeline("text-classification"' in text["usage"]
    assert image["pipeline_tag"] == "image-classification" and "AutoModelForImageClassification" in image["usage"]
    assert multi["pipeline_tag"] == "text-classification" and "top_k=None" in multi["usage"]
    assert (text["kind"], image["kind"], multi["kind"]) == ("A text", "An image", "A multi-label text")


def test_a_new_task_is_one_class_and_one_line():
    class Reversed(Task):  # a text task that reads its texts backwards: only the hook that differs is written
        name = "reversed-text-classification"

        def process(self, table, processor, d, *, keep=("labels",), desc="Tokenizing"):
            table = table.map(lambda row: {d.text_column: row[d.text_column][::-1]})
            return super().process(table, processor, d, keep=keep, desc=desc)

    register_task(Reversed)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_task(Reversed)
        recipe = load_recipe({"task": "reversed-text-classification", "target_data": None})
        assert isinstance(recipe.data.resolved_task, Reversed)
    finally:
        task_registry._TASKS.pop("reversed-text-classification")


def test_the_trainer_asks_the_task_for_the_method_rows_and_the_loss(tiny_recipe):
    """A task's training hooks are the ones that run: ``method_rows`` gives the rows DANN sees (here each example
    twice, as a token task gives several rows per example) and ``task_loss`` the supervised loss the step logs."""
    seen, losses = [], []

    class Doubled(Task):
        name = "doubled-rows-text-classification"

        def method_rows(self, *, logits, features, labels, domain, sample_weight=None, inputs=None):
            seen.append((logits.shape[0], sorted(set(domain.tolist()))))
            twice = lambda t: None if t is None else torch.cat([t, t])  # noqa: E731
            return MethodRows(twice(logits), twice(features), twice(labels), twice(domain), twice(sample_weight))

        def task_loss(self, logits, labels, labelled, row_weight, *, global_batch):
            loss = super().task_loss(logits, labels, labelled, row_weight, global_batch=global_batch)
            losses.append(loss.item())
            return loss

    register_task(Doubled)
    try:
        result = hf_transfer.run.train({**tiny_recipe, "task": "doubled-rows-text-classification", "method": "dann",
                                        "max_steps": 2, "logging_steps": 1})
    finally:
        task_registry._TASKS.pop("doubled-rows-text-classification")
    assert len(seen) == 2  # one call per training step
    rows, domains = seen[0]
    assert domains == [0, 1] and rows == 2 * tiny_recipe.get("per_device_train_batch_size", 8)  # source + target
    logged = [e for e in result.trainer.state.log_history if "task_loss" in e]
    # logging_steps 1: one entry per training step; the calls after them are the final evaluations' losses
    assert [e["task_loss"] for e in logged] == pytest.approx(losses[:2], rel=1e-5)
    assert "dann/loss" in logged[0]
