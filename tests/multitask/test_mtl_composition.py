"""What composes with a multi-task recipe: transfer methods with per-task target data (DANN across tasks), the
freezing plans, and the one-line refusals; on a tiny random BERT."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModel

import hf_transfer
from hf_transfer.data import TARGET_PREFIX
from tests.conftest import read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def task_files(review_files, tmp_path_factory):
    """Two labelled tasks (books and kitchen reviews), each with an unlabelled target (the other domain's texts)
    and a 3-class task (no target)."""
    folder = tmp_path_factory.mktemp("composition")
    books, kitchen = read_jsonl(review_files["source"]), read_jsonl(review_files["target"])
    stars = [{"text": r["text"], "label": ["bad", "fine", "great"][i % 3]} for i, r in enumerate(books[:48])]
    return {
        "books": review_files["source"],
        "kitchen": review_files["target"],
        # Target rows keep their labels in the file: the run must never read them.
        "books_target": str(write_jsonl(folder / "books_target.jsonl", kitchen[:24])),
        "kitchen_target": str(write_jsonl(folder / "kitchen_target.jsonl", books[:40])),
        "stars": str(write_jsonl(folder / "stars.jsonl", stars)),
    }


def recipe_of(tiny_model_dir, out, tasks, **extra):
    return {"model_name_or_path": tiny_model_dir, "max_length": 32, "output_dir": str(out), "max_steps": 6,
            "per_device_train_batch_size": 8, "per_device_eval_batch_size": 32, "learning_rate": 1e-3,
            "save_strategy": "no", "logging_steps": 3, "use_cpu": True, "disable_tqdm": True, "report_to": "none",
            "tasks": tasks, **extra}


def two_tasks(files, *, targets=True):
    tasks = [{"name": "books", "data": files["books"]}, {"name": "kitchen", "data": files["kitchen"]}]
    if targets:
        tasks[0]["target_data"] = files["books_target"]
        tasks[1].update(target_data=files["kitchen_target"], max_target_samples=32)
    return tasks


def test_dann_across_tasks_each_with_its_own_target(tiny_model_dir, task_files, tmp_path):
    recipe = recipe_of(tiny_model_dir, tmp_path / "dann", two_tasks(task_files), method=["dann"],
                       dann={"hidden_size": 16, "num_layers": 1}, task_sampling="round_robin")
    result = hf_transfer.train(recipe)
    m, out, trainer = result.metrics, result.output_dir, result.trainer

    # Every batch is one task's labelled rows, then as many of that task's target rows (domain 1, no label).
    loader = trainer.get_train_dataloader()
    encoded = {t: {tuple(ids) for ids in result.tokenizer([r["text"] for r in read_jsonl(task_files[f"{t}_target"])],
                                                           truncation=True, max_length=32)["input_ids"]}
               for t in ("books", "kitchen")}
    for batch in list(loader)[:4]:
        rows = batch["input_ids"].shape[0] // 2
        assert batch["domain"].tolist() == [0] * rows + [1] * rows
        assert len(set(batch["task_ids"].tolist())) == 1
        assert (batch["labels"][rows:] == -100).all() and (batch["labels"][:rows] >= 0).all()
        task = result.model.task_names[int(batch["task_ids"][0])]
        for ids, mask in zip(batch["input_ids"][rows:], batch["attention_mask"][rows:]):
            assert tuple(ids[mask.bool()].tolist()) in encoded[task]  # the task's own target rows

    # The discriminator trained on every step, and its loss is logged with the task loss.
    logged = [h for h in trainer.state.log_history if "dann/loss" in h]
    assert [h["step"] for h in logged] == [3, 6]
    for h in logged:
        assert math.isfinite(h["dann/loss"]) and math.isfinite(h["task_loss"]) and 0 <= h["dann/domain_accuracy"] <= 1
        assert h["dann/domain_loss"] > 0
    # Rows trained per task count the labelled rows only: round robin, 6 steps of 8.
    assert m["books/train_rows"] == 24 and m["kitchen/train_rows"] == 24
    # Metrics and exports as without a method.
    assert m["mean_accuracy"] == pytest.approx((m["books/accuracy"] + m["kitchen/accuracy"]) / 2)
    for name in ("config.json", "model.safetensors", "metrics.json", "recipe.yaml", "README.md"):
        assert (out / name).is_file(), name
    for task in ("books", "kitchen"):
        assert json.loads((out / "tasks" / task / "config.json").read_text())["architectures"] == [
            "BertForSequenceClassification"]
    assert "discriminator" not in " ".join(AutoModel.from_pretrained(str(out)).state_dict())
    saved = hf_transfer.load_recipe(out / "recipe.yaml")
    assert saved.to_dict() == result.recipe.to_dict()  # reruns as saved: method, its block, the targets
    assert saved.base.methods.method == ["dann"] and saved.base.method_configs["dann"].hidden_size == 16
    assert saved.tasks[1].target_data == task_files["kitchen_target"] and saved.tasks[1].max_target_samples == 32


def test_methods_see_the_feature_the_task_head_receives(tiny_model_dir, task_files, tmp_path):
    """The aligned feature is the input of the batch's task head: for BERT, the shared encoder's pooled output."""
    recipe = recipe_of(tiny_model_dir, tmp_path / "feat", two_tasks(task_files), method=["dann"], max_steps=1)
    result = hf_transfer.train(recipe)
    trainer, model = result.trainer, result.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {k: v for k, v in batch.items() if k != "domain"}
    with torch.no_grad():
        model(**inputs)  # the taps of the heads that ran hold their features until the trainer pops them
        features = trainer._pop_features()
        pooled = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               token_type_ids=batch.get("token_type_ids")).pooler_output
    torch.testing.assert_close(features, pooled)
    assert all(tap.features is None for tap in trainer._taps.values())  # nothing left for the next batch


def test_mmd_and_entropy_with_a_three_class_task_and_l2sp_without_targets(tiny_model_dir, task_files, tmp_path):
    tasks = two_tasks(task_files) + [{"name": "stars", "data": task_files["stars"],
                                      "target_data": task_files["books_target"]}]
    result = hf_transfer.train(recipe_of(tiny_model_dir, tmp_path / "mmd", tasks, method=["mmd", "entropy"]))
    keys = {k for h in result.trainer.state.log_history for k in h}
    assert {"mmd/loss", "entropy/loss"} <= keys and "stars/accuracy" in result.metrics
    plain = hf_transfer.train(recipe_of(tiny_model_dir, tmp_path / "l2sp", two_tasks(task_files, targets=False),
                                        method=["l2sp"], max_steps=2, logging_steps=1))
    logged = [h for h in plain.trainer.state.log_history if "l2sp/distance" in h]
    assert logged[0]["l2sp/distance"] == 0  # anchored at the weights before the first step
    assert logged[1]["l2sp/distance"] > 0


@pytest.mark.parametrize("change, message", [
    (lambda r: r["tasks"][1].pop("target_data"),
     "tasks[1].target_data: method dann learns from unlabelled target rows; give task 'kitchen' its own target_data"),
    (lambda r: r.update(method=["finetune"]), "tasks[0].target_data: no method in `method` learns from unlabelled"),
    (lambda r: r.update(method=["lwf"]), "method: lwf does not work in a multi-task recipe: it runs a frozen copy"),
    (lambda r: r.update(method=["mlm"]), "method: mlm does not work in a multi-task recipe"),
    (lambda r: r.update(method=["instance_weighting"]), "method: instance_weighting does not work in a multi-task"),
    (lambda r: r.update(target_data="x.jsonl"), "target_data: not used in a multi-task recipe (it has `tasks`); give "
                                                "each task its own unlabelled target under tasks[i].target_data"),
    (lambda r: r["tasks"][0].update(max_target_samples=0), "tasks[0].max_target_samples: must be > 0"),
    (lambda r: r.update(dan={"hidden_size": 4}), "dan: unknown recipe field; did you mean 'dann'?"),
    (lambda r: r.update(mmd={"kernel_num": 3}), "mmd: a block for a method that is not in `method`"),
    (lambda r: r.update(freeze_backbone=True, sharing="soft_lora"),
     "freeze_backbone: not used with sharing: soft_lora, whose base encoder is frozen already"),
    (lambda r: r.update(trainable_layers=1, sharing="shared_private"),
     "trainable_layers: not used with sharing: shared_private"),
    (lambda r: r.update(cache_frozen="true"), "cache_frozen: not used in a multi-task recipe (it has `tasks`); the "
                                              "frozen-prefix cache serves the flat trainer only"),
    (lambda r: r.update(image_column="image"), "image_column: not used in a multi-task recipe (it has `tasks`); "
                                               "recipes with task lists train text tasks only"),
])
def test_recipe_refusals_are_one_line(tiny_model_dir, task_files, tmp_path, change, message):
    recipe = recipe_of(tiny_model_dir, tmp_path / "o", two_tasks(task_files), method=["dann"])
    change(recipe)
    with pytest.raises(hf_transfer.RecipeError) as err:
        hf_transfer.load_recipe(recipe)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_target_data_refused_in_the_other_task_list_families(tiny_model_dir, task_files, tmp_path):
    tasks = two_tasks(task_files)
    lifelong = recipe_of(tiny_model_dir, tmp_path / "ll", tasks, lifelong_method="naive")
    with pytest.raises(hf_transfer.RecipeError, match=r"^tasks\[0\]\.target_data: not used in a lifelong recipe"):
        hf_transfer.load_recipe(lifelong)
    meta = recipe_of(tiny_model_dir, tmp_path / "meta", tasks, meta_method="protonet")
    with pytest.raises(hf_transfer.RecipeError, match=r"tasks\[0\]\.target_data: not used in a meta-learning"):
        hf_transfer.load_recipe(meta)
    with pytest.raises(hf_transfer.RecipeError, match="freeze_backbone: not used in a meta-learning recipe"):
        hf_transfer.load_recipe({**meta, "tasks": two_tasks(task_files, targets=False), "freeze_backbone": True})


def test_cdan_needs_the_same_classes_in_every_task(tiny_model_dir, task_files, tmp_path):
    tasks = two_tasks(task_files) + [{"name": "stars", "data": task_files["stars"],
                                      "target_data": task_files["books_target"]}]
    with pytest.raises(hf_transfer.DataError, match=r"tasks\[2\]\.data: method cdan is built for one number of"):
        hf_transfer.train(recipe_of(tiny_model_dir, tmp_path / "cdan", tasks, method=["cdan"]))
    assert not (tmp_path / "cdan").exists()


def test_target_rows_never_carry_their_labels(tiny_model_dir, task_files):
    from transformers import AutoTokenizer

    from hf_transfer.multitask.data import pair_tasks_with_targets
    from hf_transfer.tasklists.data import load_tasks, tokenize_tasks
    from hf_transfer.tasklists.recipe import parse_tasks

    specs = parse_tasks(two_tasks(task_files), {}, defaults={"text_column": "text", "label_column": "label"})
    tasks = load_tasks(specs)
    assert tasks[0].target.column_names == ["text"] and len(tasks[1].target) == 32  # max_target_samples
    tokenize_tasks(tasks, AutoTokenizer.from_pretrained(tiny_model_dir), max_length=32, task_ids=[0, 1],
                   progress=False)
    pair_tasks_with_targets(tasks, seed=0)
    # max(source rows, target rows) pairs: books 86 of 96 rows (10% held out) and 24 targets, kitchen 57 and 32.
    assert [len(t.train) for t in tasks] == [86, 57]
    for task in tasks:  # the target side holds model inputs only
        assert {c for c in task.train.column_names if c.startswith(TARGET_PREFIX)} == {
            "target_input_ids", "target_attention_mask", "target_token_type_ids"}


# ---- freezing plans ----------------------------------------------------------------------------------------------


def _initial_encoder(tiny_model_dir):
    return {k: v.clone() for k, v in AutoModel.from_pretrained(tiny_model_dir).state_dict().items()}


def _changed(state, before, prefix=""):
    return {k for k, v in before.items() if not torch.equal(state[prefix + k].cpu(), v)}


def test_trainable_layers_freezes_the_lower_shared_layers(tiny_model_dir, task_files, tmp_path):
    before = _initial_encoder(tiny_model_dir)
    result = hf_transfer.train(recipe_of(tiny_model_dir, tmp_path / "tl", two_tasks(task_files, targets=False),
                                         trainable_layers=1, max_steps=3))
    state = result.model.state_dict()
    changed = _changed(state, before, "encoder.")
    weights = {k for k in before if k.endswith(".weight")}
    frozen = {k for k in weights if k.startswith(("embeddings.", "encoder.layer.0."))}
    trained = {k for k in weights if k.startswith(("encoder.layer.1.", "pooler."))}
    assert frozen and not (changed & frozen)
    assert trained and trained <= changed
    assert result.metrics["trainable_parameters"] < sum(p.numel() for p in result.model.parameters())


def test_freeze_backbone_with_soft_l2_trains_the_heads_only(tiny_model_dir, task_files, tmp_path):
    from transformers import TrainerCallback

    before = _initial_encoder(tiny_model_dir)
    heads: dict[str, torch.Tensor] = {}

    class HeadsAtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            heads.update({k: v.detach().clone() for k, v in model.heads.state_dict().items()})

    result = hf_transfer.train(recipe_of(tiny_model_dir, tmp_path / "l2", two_tasks(task_files, targets=False),
                                         sharing="soft_l2", freeze_backbone=True, max_steps=2,
                                         task_sampling="round_robin"),
                               callbacks=[HeadsAtStart()])
    state = result.model.state_dict()
    for task in ("books", "kitchen"):
        assert not _changed(state, before, f"encoders.{task}.")
    assert result.metrics["trainable_parameters"] == sum(p.numel() for p in result.model.heads.parameters())
    assert _changed(state, heads, "heads.") == set(heads)  # both heads trained (one step each)


def test_gradual_unfreezing_opens_the_top_layer_after_the_first_step(tiny_model_dir, task_files, tmp_path):
    before = _initial_encoder(tiny_model_dir)
    result = hf_transfer.train(recipe_of(tiny_model_dir, tmp_path / "gu", two_tasks(task_files, targets=False),
                                         gradual_unfreezing_steps=1, max_steps=2))
    changed = _changed(result.model.state_dict(), before, "encoder.")
    # Step 0: the heads only; step 1: the top layer (and the pooler above it) joins; layer 0 never trains.
    assert not any(k.startswith(("embeddings.", "encoder.layer.0.")) for k in changed)
    assert "encoder.layer.1.output.dense.weight" in changed and "pooler.dense.weight" in changed


def test_layerwise_lr_decay_scales_each_encoder_layer(tiny_model_dir, task_files, tmp_path):
    result = hf_transfer.train(recipe_of(tiny_model_dir, tmp_path / "lr", two_tasks(task_files),
                                         method=["dann"], layerwise_lr_decay=0.5, max_steps=1,
                                         lr_scheduler_type="constant"))
    model, optimizer = result.model, result.trainer.optimizer
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    # depth: embeddings 0, layer i -> i + 1, pooler 3 (the top): lr * 0.5 ** (3 - depth)
    assert lr_of[id(params["encoder.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.5 ** 3)
    assert lr_of[id(params["encoder.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(1e-3 * 0.25)
    assert lr_of[id(params["encoder.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(params["encoder.pooler.dense.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(params["heads.books.classifier.weight"])] == pytest.approx(1e-3)
    disc = next(result.trainer.method_stack.parameters())
    assert lr_of[id(disc)] == pytest.approx(1e-3)  # the method's discriminator still trains at the full rate


def test_a_run_with_dann_resumes_from_its_checkpoint_exactly(tiny_model_dir, task_files, tmp_path):
    """The discriminator's state travels in the checkpoint (transfer_methods.safetensors); the resumed run ends with
    the same weights as the uninterrupted one."""
    recipe = recipe_of(tiny_model_dir, tmp_path / "full", two_tasks(task_files), method=["dann"], max_steps=4,
                       save_strategy="steps", save_steps=2, logging_steps=2)
    full = hf_transfer.train(recipe)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "transfer_methods.safetensors").is_file()
    resumed = hf_transfer.train({**recipe, "output_dir": str(tmp_path / "resumed"),
                                 "resume_from_checkpoint": str(checkpoint)})
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    torch.testing.assert_close(full.trainer.method_stack.state_dict(), resumed.trainer.method_stack.state_dict())


@pytest.mark.parametrize("sharing", ["soft_lora", "soft_l2"])
def test_layerwise_groups_of_every_encoder(tiny_model_dir, sharing):
    """soft_lora: the adapters' rates follow the depth of the layer they adapt (the frozen base is in no group);
    soft_l2: each task's encoder is scaled on its own; heads at the full rate."""
    from hf_transfer.multitask import MultiTaskModel
    from hf_transfer.multitask.freezing import layerwise_groups

    tasks = [{"name": "a", "num_labels": 2}, {"name": "b", "num_labels": 3}]
    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"]} if sharing == "soft_lora" else None
    model = MultiTaskModel.from_encoder(tiny_model_dir, tasks=tasks, sharing=sharing, lora_config=lora)
    groups = layerwise_groups(model, learning_rate=1.0, decay=0.5, weight_decay=0.1,
                              no_decay={"heads.a.classifier.bias"})
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(lr_of) == {id(p) for p in trainable.values()}  # every trained parameter once, nothing frozen
    for name, param in trainable.items():
        lr, decay = lr_of[id(param)]
        if name.startswith("heads."):
            expected = 1.0
        elif ".layer.0." in name:
            expected = 0.25  # depth 1 of top 3
        elif ".layer.1." in name:
            expected = 0.5
        elif "embeddings" in name:
            expected = 0.125
        else:
            expected = 1.0  # the pooler, at the top
        assert lr == pytest.approx(expected), name
        assert decay == (0.0 if name == "heads.a.classifier.bias" else 0.1), name
    if sharing == "soft_lora":
        assert all("lora_" in n or n.startswith("heads.") for n in trainable)


def test_dann_across_tasks_on_two_processes(tiny_model_dir, task_files, tmp_path):
    """2 processes (gloo): the discriminator is all-reduced like the model, its loss is that of the global batch,
    and the labelled rows per task match the shared schedule (target rows are not counted)."""
    import os
    import subprocess
    import sys

    import numpy as np
    import yaml

    from hf_transfer.multitask.sampling import task_schedule
    from tests.conftest import REPO

    recipe = recipe_of(tiny_model_dir, tmp_path / "ddp", two_tasks(task_files), method=["dann"],
                       dann={"hidden_size": 16}, per_device_train_batch_size=4, save_strategy="steps", save_steps=6,
                       seed=7)
    recipe.pop("use_cpu")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "recipes/accelerate/multi_cpu.yaml"), "-m", "hf_transfer", "train", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    # paired tasks: books 86 pairs (86 rows, 24 targets), kitchen 57 pairs (57 rows, 32 targets); 2 x 4 rows a step
    steps_per_epoch = int(np.ceil(86 / 8) + np.ceil(57 / 8))
    schedule = task_schedule([86, 57], steps_per_epoch, strategy="proportional", seed=7)[:6]
    assert metrics.get("books/train_rows", 0) == 8 * int((schedule == 0).sum())
    assert metrics.get("kitchen/train_rows", 0) == 8 * int((schedule == 1).sum())
    checkpoint = tmp_path / "ddp" / "checkpoint-6"
    assert (checkpoint / "transfer_methods.safetensors").is_file()
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "dann/loss" in h]
    assert len(logged) == 2 and all(math.isfinite(h["dann/loss"]) for h in logged)
