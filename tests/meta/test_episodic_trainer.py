"""Meta-learning on the Trainer: the same arithmetic as the Accelerate loop it replaced (checked against that loop,
written out here step by step), checkpoints that hold the whole learner, a resume that ends bit-identical to an
uninterrupted run, the Trainer's logging, and the push through the shared export."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import hf_transfer
from hf_transfer.checkpoints import checkpoint_problem
from hf_transfer.errors import RecipeError
from hf_transfer.meta import train_meta

LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["query", "value"]}


def _recipe(model_dir, review_files, out: Path, **extra) -> dict:
    return {
        "model_name_or_path": model_dir, "meta_method": "fomaml", "inner_steps": 1,
        "n_way": 2, "k_shot": 2, "n_query": 3, "episodes_per_device": 2,
        "tasks": [{"name": "books", "data": review_files["source"]},
                  {"name": "kitchen", "data": review_files["target"]}],
        "test_tasks": [{"name": "kitchen_test", "data": review_files["target"], "eval_fraction": 0.5}],
        "eval_shots": [], "eval_episodes": 3, "eval_n_query": 4,  # the few-shot evaluation: where compared
        "max_length": 32, "max_steps": 4, "learning_rate": 1e-3, "warmup_steps": 1, "logging_steps": 1,
        "max_grad_norm": 0.05, "save_strategy": "no", "output_dir": str(out), "use_cpu": True, "seed": 5,
        "report_to": "none", "disable_tqdm": True, **extra,
    }


def _weights(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _reference_loop(recipe_dict: dict) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The Accelerate loop meta-training ran before it moved onto the Trainer (one process), step by step: the same
    loading order after the seed, AdamW (SGD for Reptile) over the meta-parameters, the same scheduler, each
    episode's meta-gradient summed then averaged, clipping except for Reptile."""
    from transformers import get_scheduler, set_seed

    from hf_transfer.backbones import load_tokenizer
    from hf_transfer.meta import Embedder, EpisodeSampler, EpisodicLearner
    from hf_transfer.meta.trainer import _pools, learner_config, load_encoder
    from hf_transfer.recipe import load_recipe
    from hf_transfer.tasklists.data import load_tasks, tokenize_tasks

    recipe = load_recipe(recipe_dict)
    args, meta = recipe.training, recipe.meta
    set_seed(args.seed)
    tasks = load_tasks(recipe.tasks, seed=args.seed)
    test_tasks = load_tasks(recipe.test_tasks, seed=args.seed)
    tokenizer = load_tokenizer(recipe.model.model_name_or_path)
    everything = tasks + test_tasks
    tokenize_tasks(everything, tokenizer, max_length=recipe.max_length, task_ids=list(range(len(everything))),
                   progress=False)
    encoder = load_encoder(recipe.model.model_name_or_path, peft=recipe.peft)
    learner = EpisodicLearner(Embedder(encoder, pooling=meta.pooling), learner_config(meta))
    pools, labels = _pools(tasks, tokenizer, "cpu")
    sampler = EpisodeSampler(labels, n_way=meta.n_way, k_shot=meta.k_shot, n_query=meta.n_query, seed=args.seed)
    params = learner.meta_parameters()
    if meta.meta_method == "reptile":
        optimizer = torch.optim.SGD(params, lr=args.learning_rate)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    warmup = args.get_warmup_steps(args.max_steps)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=args.max_steps)
    learner.train()
    losses = []
    for step in range(args.max_steps):
        grads, episode_losses = None, []
        episodes = sampler.for_process(step, per_process=meta.episodes_per_device)
        for ep in episodes:
            pool = pools[ep.task]
            optimizer.zero_grad(set_to_none=True)
            episode_losses.append(learner.meta_step(pool.batch(ep.support), torch.as_tensor(ep.support_labels),
                                                    pool.batch(ep.query), torch.as_tensor(ep.query_labels), ep.n_way))
            step_grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
            grads = step_grads if grads is None else [a + b for a, b in zip(grads, step_grads)]
        for p, g in zip(params, grads):
            p.grad = g / len(episodes)
        if args.max_grad_norm and meta.meta_method != "reptile":
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(float(np.mean(episode_losses)))
    return _weights(learner), losses


@pytest.mark.parametrize("method,extra", [
    ("fomaml", {}),  # AdamW, warm-up, clipping; dropout on (the tiny model's 0.1)
    ("reptile", {"learning_rate": 0.5, "inner_lr": 0.1}),  # SGD, never clipped
])
def test_same_arithmetic_as_the_accelerate_loop(tiny_model_dir, review_files, tmp_path, method, extra):
    recipe = _recipe(tiny_model_dir, review_files, tmp_path / "meta", meta_method=method, **extra)
    reference, losses = _reference_loop(recipe)
    result = train_meta(recipe)
    _assert_same_weights(_weights(result.learner), reference)
    assert result.metrics["train_loss"] == pytest.approx(np.mean(losses), rel=1e-12)
    state = json.loads((tmp_path / "meta" / "trainer_state.json").read_text())
    logged = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert logged == pytest.approx(losses, rel=1e-6)  # the Trainer sums the step losses in float32


class StopAt(TrainerCallback):
    """Ends training after ``step`` steps, as a killed run would (its checkpoints stay)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class StepsTrained(TrainerCallback):
    """The steps a run trains itself."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.mark.parametrize("method,extra", [
    ("hypernet", {}),  # the hypernetwork head is part of the checkpoint
    ("fomaml", {"peft": LORA}),  # LoRA weights (and their AdamW moments) are part of it
])
def test_resume_ends_bit_identical_to_an_uninterrupted_run(tiny_model_dir, review_files, tmp_path, method, extra):
    checkpoints = {"save_strategy": "steps", "save_steps": 2, "eval_shots": [2]}
    whole = train_meta(_recipe(tiny_model_dir, review_files, tmp_path / "whole", meta_method=method,
                               **checkpoints, **extra))
    out = tmp_path / "resumed"
    first = train_meta(_recipe(tiny_model_dir, review_files, out, meta_method=method, **checkpoints, **extra),
                       callbacks=[StopAt(2)])
    assert first.metrics["train_steps"] == 2 and not (out / "checkpoint-4").exists()
    checkpoint = out / "checkpoint-2"
    assert checkpoint_problem(checkpoint) is None  # weights, optimizer, scheduler, RNG, trainer state: all there
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert any(k.startswith("hyperhead.") for k in saved) == (method == "hypernet")
    assert any("lora_A" in k for k in saved) == bool(extra.get("peft"))
    # Resumed as `hf-transfer train` does (output folder check, the meta family, the shared preamble).
    trained = StepsTrained()
    resumed = hf_transfer.train(_recipe(tiny_model_dir, review_files, out, meta_method=method,
                                        resume_from_checkpoint="latest", **checkpoints, **extra), callbacks=[trained])
    assert trained.steps == [3, 4]  # it did resume: steps 1-2 came from the checkpoint, weights, moments, RNG and all
    _assert_same_weights(_weights(resumed.learner), _weights(whole.learner))
    assert "kitchen_test/2shot_accuracy" in whole.metrics
    for key, value in whole.metrics.items():
        if key != "train_runtime":
            assert resumed.metrics[key] == value, key  # train_loss too: the run's loss tally is in the checkpoint
    history = [json.loads((d / "trainer_state.json").read_text())["log_history"] for d in (tmp_path / "whole", out)]
    losses = [[(e["step"], e["loss"]) for e in h if "loss" in e] for h in history]
    assert losses[0] == losses[1] and [s for s, _ in losses[0]] == [1, 2, 3, 4]


def test_logging_goes_through_the_trainer(tiny_model_dir, review_files, tmp_path):
    """Every log reaches the callbacks (what report_to integrations are), and the export keeps trainer_state.json."""
    seen = []

    class Watch(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    result = train_meta(_recipe(tiny_model_dir, review_files, tmp_path / "meta", meta_method="protonet",
                                logging_steps=2), callbacks=[Watch()])
    steps = [e for e in seen if "loss" in e]
    assert len(steps) == 2 and all({"loss", "learning_rate", "grad_norm"} <= set(e) for e in steps)
    out = tmp_path / "meta"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [2, 4]
    assert json.loads((out / "log_history.json").read_text()) == state["log_history"]
    assert json.loads((out / "all_results.json").read_text())["train_steps"] == 4
    assert result.trainer is not None and result.is_main_process and result.learner is result.model


def test_push_uses_the_shared_export(tiny_model_dir, review_files, tmp_path, monkeypatch):
    from hf_transfer import hub, outputs

    pushed = {}

    def fake_push(folder, repo_id, *, token=None, private=None, **kwargs):
        pushed.update(repo_id=repo_id, token=token, private=private,
                      files=sorted(p.name for p in Path(folder).iterdir()))
        return f"https://huggingface.co/{repo_id}"

    monkeypatch.setattr(outputs, "check_hub_reachable", lambda *a, **k: None)
    monkeypatch.setattr(hub, "push_folder", fake_push)
    out = tmp_path / "meta"
    hf_transfer.train(_recipe(tiny_model_dir, review_files, out, meta_method="protonet", max_steps=2,
                              push_to_hub=True, hub_model_id="someone/meta-tiny", hub_token="hf_secret",
                              hub_private_repo=True, save_strategy="steps", save_steps=2))
    assert pushed["repo_id"] == "someone/meta-tiny" and pushed["token"] == "hf_secret" and pushed["private"] is True
    for name in ("config.json", "model.safetensors", "meta_config.json", "trainer_state.json", "metrics.json",
                 "README.md", "recipe.yaml"):
        assert name in pushed["files"], name
    assert "hf_secret" not in (out / "checkpoint-2" / "training_args.bin").read_bytes().decode("latin-1")
    assert "someone/meta-tiny" in (out / "README.md").read_text()


@pytest.mark.parametrize("field,value", [("gradient_accumulation_steps", 2), ("fp16", True)])
def test_arguments_meta_training_cannot_honour_are_refused(tiny_model_dir, review_files, tmp_path, field, value):
    with pytest.raises(RecipeError, match=f"^{field}: "):
        train_meta(_recipe(tiny_model_dir, review_files, tmp_path / "meta", **{field: value}))


@pytest.mark.slow
def test_two_process_resume_ends_bit_identical(tiny_model_dir, review_files, tmp_path):
    """Under `accelerate launch` (2 gloo processes): each process skips its own share of the trained steps and takes
    back its own RNG state, so resuming from checkpoint-2 ends where the uninterrupted run ends."""
    import os
    import subprocess

    import yaml

    from tests.conftest import REPO, accelerate_launch

    def launch(name: str, **extra) -> Path:
        recipe = _recipe(tiny_model_dir, review_files, tmp_path / name, episodes_per_device=1, save_strategy="steps",
                         save_steps=2, **extra)
        recipe.pop("use_cpu")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = subprocess.run(accelerate_launch("-m", "hf_transfer", "train", str(path)), capture_output=True,
                             text=True, cwd=tmp_path, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr[-4000:]
        return tmp_path / name

    whole = launch("whole")
    assert (whole / "checkpoint-2" / "rng_state_1.pth").is_file()  # both ranks saved their RNG state
    resumed = launch("resumed", resume_from_checkpoint=str(whole / "checkpoint-2"))
    assert (resumed / "checkpoint-4").is_dir() and not (resumed / "checkpoint-2").exists()  # it trained steps 3-4
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "metrics.json").read_text())["train_loss"] == pytest.approx(
        json.loads((whole / "metrics.json").read_text())["train_loss"], rel=1e-12)
