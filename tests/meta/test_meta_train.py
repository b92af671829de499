"""Meta-training end to end on a tiny random BERT: every method, LoRA-only adaptation, the saved folder, few-shot
evaluation from the command line, recipe errors."""

import json

import pytest
import torch

from hf_transfer.cli import main
from hf_transfer.errors import RecipeError
from hf_transfer.meta import Embedder, EpisodicLearner, LearnerConfig, load_meta_learner, train_meta
from hf_transfer.meta.trainer import load_encoder
from hf_transfer.recipe import load_recipe


def _recipe(tiny_model_dir, review_files, tmp_path, **extra):
    return {
        "model_name_or_path": tiny_model_dir,
        "meta_method": "protonet",
        "n_way": 2, "k_shot": 2, "n_query": 3,
        "tasks": [{"name": "books", "data": review_files["source"]}],
        "test_tasks": [{"name": "kitchen", "data": review_files["target"], "eval_fraction": 0.5}],
        "eval_shots": [2], "eval_episodes": 3, "eval_n_query": 4,
        "max_length": 32, "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1,
        "output_dir": str(tmp_path / "meta"), "use_cpu": True, "seed": 3,
        **extra,
    }


@pytest.fixture(scope="module")
def protonet_dir(tiny_model_dir, review_files, tmp_path_factory):
    """One protonet run shared by the tests that need a meta-trained folder."""
    tmp = tmp_path_factory.mktemp("protonet")
    train_meta(_recipe(tiny_model_dir, review_files, tmp, distance="cosine"))
    return tmp / "meta"


def _check_folder(out, method, learner):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 2 and 0 <= metrics["kitchen/2shot_accuracy"] <= 1
    assert metrics["kitchen/2shot_ci95"] >= 0 and metrics["eval_tasks_held_out"] is True
    assert (out / "config.json").is_file() and (out / "meta_config.json").is_file()
    loaded, _ = load_meta_learner(str(out))
    assert loaded.config.meta_method == method
    assert (loaded.hyperhead is not None) == (method == "hypernet")
    saved = dict(loaded.embedder.encoder.named_parameters())
    for name, p in learner.embedder.encoder.named_parameters():
        assert torch.equal(p.detach(), saved[name].detach())


def test_protonet_folder(protonet_dir):
    learner, _ = load_meta_learner(str(protonet_dir))
    assert learner.config.distance == "cosine"
    _check_folder(protonet_dir, "protonet", learner)


@pytest.mark.parametrize("method,extra", [
    ("fomaml", {"inner_steps": 1}),
    ("reptile", {"inner_steps": 1, "learning_rate": 1.0, "inner_lr": 0.1}),
    ("hypernet", {}),
])
def test_methods_train_save_and_reload(tiny_model_dir, review_files, tmp_path, method, extra):
    before = load_encoder(tiny_model_dir).embeddings.word_embeddings.weight.detach().clone()
    result = train_meta(_recipe(tiny_model_dir, review_files, tmp_path, meta_method=method, **extra))
    _check_folder(tmp_path / "meta", method, result.learner)
    assert not torch.equal(before, result.learner.embedder.encoder.embeddings.word_embeddings.weight.detach())


def _episode(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = dict(tok(["good", "bad", "fine", "awful"], padding=True, return_tensors="pt"))
    return batch, torch.tensor([0, 1, 0, 1])


def test_fomaml_head_only_inner_loop(tiny_model_dir):
    learner = EpisodicLearner(Embedder(load_encoder(tiny_model_dir)),
                              LearnerConfig(meta_method="fomaml", inner_params="head", inner_steps=3, inner_lr=0.5))
    batch, labels = _episode(tiny_model_dir)
    before = [p.detach().clone() for p in learner.meta_parameters()]
    loss = learner.meta_step(batch, labels, batch, labels, 2)
    missing = [n for n, p in learner.named_parameters() if p.requires_grad and p.grad is None]
    assert loss > 0 and all("pooler" in n for n in missing)  # mean pooling does not use the pooler
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, learner.meta_parameters()))  # only .grad is set
    logits = learner.adapt_and_predict(batch, labels, batch, 2, "maml")
    assert logits.shape == (4, 2)


def test_lora_inner_loop_leaves_the_base_frozen(tiny_model_dir):
    encoder = load_encoder(tiny_model_dir, peft={"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                 "target_modules": ["query", "value"]})
    learner = EpisodicLearner(Embedder(encoder), LearnerConfig(meta_method="fomaml", inner_steps=2, inner_lr=0.5))
    params = learner.meta_parameters()
    assert params and all("lora_" in n for n, p in learner.named_parameters() if p.requires_grad)
    base = {n: p.detach().clone() for n, p in learner.named_parameters() if not p.requires_grad}
    batch, labels = _episode(tiny_model_dir)
    learner.meta_step(batch, labels, batch, labels, 2)
    assert all(p.grad is not None for p in params)
    torch.optim.SGD(params, lr=1.0).step()
    for n, p in learner.named_parameters():
        if n in base:
            assert torch.equal(p.detach(), base[n])


def test_cli_few_shot_evaluate(protonet_dir, tiny_model_dir, review_files, capsys):
    code = main(["evaluate", str(protonet_dir), "--data", review_files["target"], "--shots", "2",
                 "--episodes", "3", "--n_query", "4", "--max_length", "32"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shots"] == 2 and out["episodes"] == 3 and out["adapt"] == "protonet"
    assert len(out["accuracies"]) == 3 and 0 <= out["accuracy"] <= 1
    code = main(["evaluate", tiny_model_dir, "--data", review_files["target"], "--shots", "2", "--episodes", "2",
                 "--n_query", "4", "--max_length", "32", "--adapt", "finetune", "--finetune_steps", "2"])
    assert code == 0 and json.loads(capsys.readouterr().out)["adapt"] == "finetune"
    assert main(["evaluate", tiny_model_dir, "--data", review_files["target"], "--shots", "500"]) == 2


def test_recipe_errors(tiny_model_dir, review_files, tmp_path):
    base = _recipe(tiny_model_dir, review_files, tmp_path)
    recipe = load_recipe(base)
    assert recipe.meta.k_shot == 2 and recipe.test_tasks[0].name == "kitchen"
    assert load_recipe(base, {"test_tasks.kitchen.max_eval_samples": "5"}).test_tasks[0].max_eval_samples == 5
    with pytest.raises(RecipeError, match="distance: unknown value 'cosin'; did you mean 'cosine'"):
        load_recipe({**base, "distance": "cosin"})
    with pytest.raises(RecipeError, match="k_shots: unknown recipe field; did you mean 'k_shot'"):
        load_recipe({**base, "k_shots": 3})
    with pytest.raises(RecipeError, match="inner_params: reptile"):
        load_recipe({**base, "meta_method": "reptile", "inner_params": "head"})
    with pytest.raises(RecipeError, match=r"test_tasks\[0\].dat"):
        load_recipe({**base, "test_tasks": [{"name": "x", "dat": "y"}]})
    with pytest.raises(RecipeError, match="method: not used in a meta-learning recipe"):
        load_recipe({**base, "method": "dann"})


@pytest.mark.slow
def test_two_process_meta_training(tiny_model_dir, review_files, tmp_path):
    """`accelerate launch` with 2 CPU processes: distinct episodes, averaged meta-gradients (train_meta checks that
    both processes end with the same weights), outputs written once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    recipe = _recipe(tiny_model_dir, review_files, tmp_path, meta_method="fomaml", inner_steps=1)
    recipe.pop("use_cpu")
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(repo / "recipes/accelerate/multi_cpu.yaml"), "-m", "hf_transfer", "train", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("written to") == 1
    assert json.loads((tmp_path / "meta" / "metrics.json").read_text())["train_steps"] == 2


def test_trainable_layers_meta_trains_only_the_top_of_the_encoder(tiny_model_dir, review_files, tmp_path):
    """A freezing plan in a meta-learning recipe: with trainable_layers 1 the embeddings and the lower layer stay the
    pretrained ones, the top layer meta-trains."""
    before = {n: p.detach().clone() for n, p in load_encoder(tiny_model_dir).named_parameters()}
    result = train_meta(_recipe(tiny_model_dir, review_files, tmp_path, meta_method="fomaml", inner_steps=1,
                                trainable_layers=1))
    after = dict(result.learner.embedder.encoder.named_parameters())
    lower = [n for n in before if n.startswith(("embeddings.", "encoder.layer.0."))]
    top = [n for n in before if n.startswith("encoder.layer.1.") and n.endswith("weight")]
    assert lower and top
    assert all(torch.equal(before[n], after[n].detach()) for n in lower)
    assert all(not after[n].requires_grad for n in lower)
    assert any(not torch.equal(before[n], after[n].detach()) for n in top)


def test_meta_freezing_plans_that_cannot_hold_are_refused(tiny_model_dir, review_files, tmp_path):
    with pytest.raises(RecipeError, match="^trainable_layers: 0 freezes the whole encoder"):
        load_recipe(_recipe(tiny_model_dir, review_files, tmp_path, trainable_layers=0))
    with pytest.raises(RecipeError, match="^trainable_layers: with a peft block"):
        load_recipe(_recipe(tiny_model_dir, review_files, tmp_path, trainable_layers=1,
                            peft={"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}))
    with pytest.raises(RecipeError, match="^freeze_backbone: not used in a meta-learning recipe"):
        load_recipe(_recipe(tiny_model_dir, review_files, tmp_path, freeze_backbone=True))
    assert load_recipe(_recipe(tiny_model_dir, review_files, tmp_path, meta_method="hypernet",
                               trainable_layers=0)).model.trainable_layers == 0
