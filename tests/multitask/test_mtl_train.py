"""Multi-task training end to end on a tiny random BERT: hf_transfer.train, the CLI, per-task export loaded by
pipeline() in a process without hf_transfer, adding a task later, recipe/data errors, and 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModel

import hf_transfer
from hf_transfer.multitask import MultiTaskModel
from hf_transfer.multitask.sampling import task_schedule
from tests.conftest import read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[2]
STARS = ["bad", "fine", "great"]
FAKE_TOKEN = "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"


@pytest.fixture(scope="module")
def task_files(review_files, tmp_path_factory):
    """books and kitchen reviews (2 classes), restaurant reviews with 3 string labels, and a regression task."""
    folder = tmp_path_factory.mktemp("tasks")
    restaurants = read_jsonl(REPO / "tests" / "data" / "restaurant_reviews.jsonl")
    stars = [{"review": r["text"], "stars": STARS[i % 3]} for i, r in enumerate(restaurants[:60])]
    books = read_jsonl(Path(review_files["source"]))
    rating = [{"text": r["text"], "score": float(r["label"]) * 4 + 1 + 0.1 * (i % 5)} for i, r in enumerate(books)]
    return {
        "books": review_files["source"],
        "kitchen": review_files["target"],
        "stars": str(write_jsonl(folder / "stars.jsonl", stars)),
        "rating": str(write_jsonl(folder / "rating.jsonl", rating)),
    }


def base_recipe(tiny_model_dir, out, **extra):
    return {
        "model_name_or_path": tiny_model_dir,
        "max_length": 32,
        "output_dir": str(out),
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "logging_steps": 3,
        "use_cpu": True,
        "disable_tqdm": True,
        "report_to": "none",
        **extra,
    }


def run_python(code: str) -> str:
    """Run code in a fresh interpreter that never imports hf_transfer (checked)."""
    check = "\nimport sys\nassert not any(m.startswith('hf_transfer') for m in sys.modules), 'hf_transfer imported'\n"
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, env=env, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_hard_sharing_end_to_end_and_pipeline_loads_each_task(tiny_model_dir, task_files, tmp_path):
    tasks = [
        {"name": "books", "data": task_files["books"], "class_names": ["negative", "positive"]},
        {"name": "kitchen", "data": task_files["kitchen"], "eval_data": task_files["kitchen"]},
        {"name": "stars", "data": task_files["stars"], "text_column": "review", "label_column": "stars"},
        {"name": "rating", "data": task_files["rating"], "label_column": "score", "problem_type": "regression"},
    ]
    result = hf_transfer.train(base_recipe(tiny_model_dir, tmp_path / "hard", tasks=tasks, sharing="hard",
                                           task_sampling="round_robin", loss_weighting="uncertainty",
                                           eval_strategy="steps", eval_steps=6, hub_token=FAKE_TOKEN))
    m, out = result.metrics, result.output_dir
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".md", ".txt"}:
            assert FAKE_TOKEN not in path.read_text(errors="ignore"), path
    (periodic,) = [h for h in result.trainer.state.log_history if "eval_rating_mse" in h]
    assert periodic["step"] == 6 and "eval_stars_accuracy" in [k for h in result.trainer.state.log_history for k in h]
    accuracies = [m[f"{t}/accuracy"] for t in ("books", "kitchen", "stars")]
    assert all(0 <= a <= 1 for a in accuracies) and m["mean_accuracy"] == pytest.approx(np.mean(accuracies))
    assert m["rating/mse"] >= 0 and "rating/accuracy" not in m
    assert m["train_steps"] == 6
    # round robin over 4 tasks, 6 steps of 8 rows: books, kitchen, stars, rating, books, kitchen
    assert {k: v for k, v in m.items() if k.endswith("/train_rows")} == {
        "books/train_rows": 16, "kitchen/train_rows": 16, "stars/train_rows": 8, "rating/train_rows": 8}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "recipe.yaml", "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["stars/accuracy"] == m["stars/accuracy"]
    assert "stars" in (out / "README.md").read_text()
    for task in ("books", "kitchen", "stars", "rating"):
        assert (out / "tasks" / task / "config.json").is_file() and (out / "tasks" / task / "README.md").is_file()
    assert hf_transfer.load_recipe(out / "recipe.yaml").to_dict() == result.recipe.to_dict()  # reruns as saved

    loaded = AutoModel.from_pretrained(str(out))
    assert isinstance(loaded, MultiTaskModel) and loaded.task_names == ["books", "kitchen", "stars", "rating"]
    texts = ["the food was wonderful", "cold soup and rude staff"]
    enc = result.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = {t: loaded.eval()(**enc, task=t).logits for t in ("stars", "books", "rating")}
    printed = run_python(
        "import json\nfrom transformers import pipeline\nout = {}\n"
        f"for task in ('stars', 'books'):\n"
        f"    clf = pipeline('text-classification', model={str(out / 'tasks')!r} + '/' + task)\n"
        f"    out[task] = clf({texts!r}, top_k=None)\n"
        f"reg = pipeline('text-classification', model={str(out / 'tasks' / 'rating')!r}, function_to_apply='none')\n"
        f"out['rating'] = reg({texts!r})\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(printed)
    for task, names in (("stars", STARS), ("books", ["negative", "positive"])):
        for row, scores in enumerate(got[task]):
            by_label = {s["label"]: s["score"] for s in scores}
            assert set(by_label) == set(names)
            probs = expected[task][row].softmax(-1).tolist()
            assert [by_label[n] for n in names] == pytest.approx(probs, abs=1e-5)
    assert [r["score"] for r in got["rating"]] == pytest.approx(expected["rating"][:, 0].tolist(), abs=1e-4)


def test_soft_lora_from_the_cli_then_add_a_task_leaves_the_others_unchanged(tiny_model_dir, task_files, tmp_path):
    from hf_transfer.cli import main

    recipe = base_recipe(tiny_model_dir, tmp_path / "unused", sharing="soft_lora",
                         peft={"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query", "value"]},
                         tasks=[{"name": "books", "data": task_files["books"]},
                                {"name": "kitchen", "data": task_files["kitchen"]}])
    path = tmp_path / "soft_lora.yaml"
    path.write_text(yaml.safe_dump(recipe))
    first = tmp_path / "two_tasks"
    assert main(["train", str(path), "--output_dir", str(first), "--tasks.kitchen.max_train_samples", "40",
                 "--learning_rate", "5e-3"]) == 0
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["sharing"] == "soft_lora" and set(metrics) >= {"books/accuracy", "kitchen/accuracy"}
    assert yaml.safe_load((first / "recipe.yaml").read_text())["tasks"][1]["max_train_samples"] == 40

    old = AutoModel.from_pretrained(str(first)).eval()
    added = hf_transfer.train(base_recipe(
        tiny_model_dir, tmp_path / "three_tasks", from_multitask_model=str(first), learning_rate=5e-3,
        tasks=[{"name": "kitchen", "data": task_files["kitchen"]},
               {"name": "stars", "data": task_files["stars"], "text_column": "review", "label_column": "stars"}]))
    new = added.model.eval()
    assert new.task_names == ["books", "kitchen", "stars"]
    assert set(added.metrics) >= {"kitchen/accuracy", "stars/accuracy"} and "books/accuracy" not in added.metrics
    assert added.metrics["stars/train_rows"] == 6 * 8 and "kitchen/train_rows" not in added.metrics
    enc = added.tokenizer(["great value", "it broke", "fine I guess"], padding=True, return_tensors="pt")
    with torch.no_grad():
        for task in ("books", "kitchen"):
            torch.testing.assert_close(new(**enc, task=task).logits, old(**enc, task=task).logits)
        assert new(**enc, task="stars").logits.shape == (3, 3)
    # only the new adapter and head trained: each LoRA pair is r*(in+out) = 2*(32+32) on 4 layers, head 32*3+3
    assert added.metrics["trainable_parameters"] == 4 * 2 * 64 + 32 * 3 + 3
    assert (added.output_dir / "tasks" / "books" / "config.json").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["tasks"][1].update(lable_column="x"),
         "tasks[1].lable_column: unknown task field; did you mean 'label_column'?"),
        (lambda r: r["tasks"][0].pop("data"), "tasks[0].data: required"),
        (lambda r: r["tasks"][0].update(num_labels=1), "tasks[0].num_labels: must be at least 2"),
        (lambda r: r["tasks"][1].update(name="books"), "tasks[1].name: duplicate task name 'books'"),
        (lambda r: r["tasks"][0].update(name="my-books"), "tasks[0].name: 'my-books' is not a usable task name"),
        (lambda r: r["tasks"][0].update(max_train_samples="x"), "tasks[0].max_train_samples: expected int, got 'x'"),
        (lambda r: r["tasks"].append("oops"), "tasks[2]: expected a mapping"),
        (lambda r: r.update(source_data="a.jsonl"), "source_data: not used in a multi-task recipe"),
        (lambda r: r.update(sharing="hardd"), "sharing: unknown value 'hardd'; did you mean 'hard'?"),
        (lambda r: r.update(peft={"peft_type": "LORA", "r": 2}), "peft: used only with sharing: soft_lora"),
        (lambda r: r.update(tasks=[]), "tasks: expected a list of task entries"),
        (lambda r: r.update(learnin_rate=1), "learnin_rate: unknown recipe field; did you mean 'learning_rate'?"),
        (lambda r: r.update(sharng="hard"), "sharng: unknown recipe field; did you mean 'sharing'?"),
        (lambda r: r.update(method="dann"), "tasks[0].target_data: method dann learns from unlabelled target rows"),
        (lambda r: r.update(method="lwf"), "method: lwf does not work in a multi-task recipe"),
    ],
)
def test_recipe_errors_name_the_task_field(tiny_model_dir, task_files, tmp_path, change, message):
    recipe = base_recipe(tiny_model_dir, tmp_path / "o", tasks=[{"name": "books", "data": task_files["books"]},
                                                                {"name": "kitchen", "data": task_files["kitchen"]}])
    change(recipe)
    with pytest.raises(hf_transfer.RecipeError) as err:
        hf_transfer.load_recipe(recipe)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "task, message",
    [
        ({"text_column": "body"}, "tasks[1].text_column: column 'body' is not in tasks[1].data"),
        ({"num_labels": 2, "label_column": "stars", "text_column": "review", "data": "STARS"},
         "tasks[1].num_labels: 2 given but tasks[1].data"),
        ({"data": "missing.jsonl"}, "tasks[1].data: file 'missing.jsonl' does not exist"),
        ({"problem_type": "regression", "data": "STARS", "label_column": "stars", "text_column": "review"},
         "tasks[1].label_column: tasks[1].data"),
    ],
)
def test_data_errors_come_before_anything_is_written(tiny_model_dir, task_files, tmp_path, task, message):
    entry = {"name": "second", "data": task_files["kitchen"], **task}
    if entry["data"] == "STARS":
        entry["data"] = task_files["stars"]
    recipe = base_recipe(tiny_model_dir, tmp_path / "o", tasks=[{"name": "books", "data": task_files["books"]}, entry])
    with pytest.raises(hf_transfer.DataError) as err:
        hf_transfer.train(recipe)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o").exists()


def test_cli_task_override_of_an_unknown_task(tiny_model_dir, task_files, tmp_path):
    recipe = base_recipe(tiny_model_dir, tmp_path / "o", tasks=[{"name": "books", "data": task_files["books"]}])
    with pytest.raises(hf_transfer.RecipeError, match="tasks.bokks.data: no task named 'bokks'; did you mean 'books'"):
        hf_transfer.load_recipe(recipe, ["--tasks.bokks.data", "x.jsonl"])


def test_shipped_recipes_parse_and_point_at_the_fdu_mtl_data():
    for name in ("hard", "soft_lora", "shared_private"):
        recipe = hf_transfer.load_recipe(REPO / "recipes" / "multitask" / f"{name}.yaml")
        assert recipe.multitask.sharing == name and len(recipe.tasks) == 8
        for task in recipe.tasks:
            assert (REPO / task.data).is_file() and (REPO / task.eval_data).is_file()


def test_two_process_run_draws_one_task_per_step_on_every_process(tiny_model_dir, task_files, tmp_path):
    """shared_private with the adversarial discriminator, 2 processes (gloo): every step's rows on both processes
    belong to the scheduled task (the per-task row counts, summed over processes, match the shared schedule), the
    data is sharded (the epoch is half as long in steps), and the outputs are written once."""
    recipe = base_recipe(tiny_model_dir, tmp_path / "ddp", sharing="shared_private", adversarial_weight=0.1,
                         peft={"peft_type": "LORA", "r": 2, "target_modules": ["query", "value"]},
                         per_device_train_batch_size=4, save_strategy="steps", save_steps=6, seed=7,
                         tasks=[{"name": "books", "data": task_files["books"]},
                                {"name": "kitchen", "data": task_files["kitchen"]}])
    recipe.pop("use_cpu")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "recipes/accelerate/multi_cpu.yaml"), "-m", "hf_transfer", "train", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("written to") == 1
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    # 86 books rows (96 minus 10 held out) and 57 kitchen rows (64 minus 7); 2 processes x 4 rows a step
    steps_per_epoch = int(np.ceil(86 / 8) + np.ceil(57 / 8))
    schedule = task_schedule([86, 57], steps_per_epoch, strategy="proportional", seed=7)[:6]
    assert metrics["train_steps"] == 6
    assert metrics.get("books/train_rows", 0) == 8 * int((schedule == 0).sum())
    assert metrics.get("kitchen/train_rows", 0) == 8 * int((schedule == 1).sum())
    state = json.loads((tmp_path / "ddp" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(6 / steps_per_epoch, abs=1e-3)
    assert (tmp_path / "ddp" / "checkpoint-6" / "rng_state_1.pth").is_file()
    assert any("adversarial" in h for h in state["log_history"])
    assert (tmp_path / "ddp" / "tasks" / "kitchen" / "config.json").is_file()


@pytest.mark.hub
@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("HF_TRANSFER_TEST_HUB_REPO")),
    reason="set HF_TOKEN and HF_TRANSFER_TEST_HUB_REPO (a repo you own) to run the real push",
)
def test_real_push_of_the_whole_model_and_its_tasks(tiny_model_dir, task_files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    repo = os.environ["HF_TRANSFER_TEST_HUB_REPO"]
    hf_transfer.train(base_recipe(tiny_model_dir, tmp_path / "push", push_to_hub=True, hub_model_id=repo,
                                  hub_private_repo=True, tasks=[{"name": "books", "data": task_files["books"]},
                                                                {"name": "kitchen", "data": task_files["kitchen"]}]))
    from huggingface_hub import snapshot_download
    from transformers import pipeline

    local = snapshot_download(repo)
    assert isinstance(AutoModel.from_pretrained(local), MultiTaskModel)
    assert pipeline("text-classification", model=os.path.join(local, "tasks", "books"))("fine")[0]["label"]
