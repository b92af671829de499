"""Frozen-prefix caching (``cache_frozen``): training on cached hidden states of the frozen bottom gives the model
that training the whole network gives, and it exports as an ordinary transformers model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

import hf_transfer
from hf_transfer.backbones import set_trainable_top_layers
from hf_transfer.errors import RecipeError
from hf_transfer.frozen_prefix import FrozenPrefixCache

TEXTS = ["a short one", "a somewhat longer review of a kitchen knife that cuts well", "ok", "not good at all, sadly"]


@pytest.fixture
def recipe(no_dropout_model_dir, review_files, tmp_path) -> dict:
    """A few steps on the tiny BERT without dropout, so that runs with and without the cache are comparable. Plain
    SGD: Adam divides each gradient by its own size, so for a weight whose true gradient is 0 (an attention key's
    bias: softmax ignores a constant added to every score) it turns round-off (~1e-9, different with and without the
    cache) into a step of up to the learning rate; SGD keeps a difference of round-off a difference of round-off."""
    return {
        "model_name_or_path": no_dropout_model_dir,
        "source_data": review_files["source"],
        "target_data": review_files["target"],
        "max_length": 48,
        "output_dir": str(tmp_path / "out"),
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 0.1,
        "optim": "sgd",
        "save_strategy": "no",
        "logging_steps": 3,
        "use_cpu": True,
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
        "seed": 7,
    }


def _train(recipe: dict, tmp_path, name: str, **overrides):
    result = hf_transfer.train({**recipe, "output_dir": str(tmp_path / name), **overrides})
    return result, {n: p.detach().clone() for n, p in result.model.named_parameters()}


def _model(model_dir: str, *, trainable_layers: int) -> torch.nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    set_trainable_top_layers(model, trainable_layers)
    return model.eval()


def _batch(model_dir: str, texts=TEXTS) -> dict:
    return dict(AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("trainable_layers", [0, 1, 2])
def test_cached_forward_gives_the_models_logits(no_dropout_model_dir, trainable_layers):
    model = _model(no_dropout_model_dir, trainable_layers=trainable_layers)
    cache = FrozenPrefixCache(model, first_trainable=2 - trainable_layers)
    assert cache.structure_problem() is None
    batch = _batch(no_dropout_model_dir)
    with torch.no_grad():
        reference = model(**batch).logits
        with cache.attached():
            cached = model(**batch).logits
            again = model(**batch).logits  # every row from the cache now
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, reference, atol=1e-5, rtol=1e-4)
    assert (cache.misses, cache.hits) == (len(TEXTS), len(TEXTS))
    assert cache.first_token == (trainable_layers == 0)
    # Detached, the model runs its own forward again (nothing patched is left on it).
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_rows_are_found_whatever_the_padding(no_dropout_model_dir):
    """A row's key is its real tokens: padded to another length in another batch, the same row is a hit."""
    model = _model(no_dropout_model_dir, trainable_layers=1)
    cache = FrozenPrefixCache(model, first_trainable=1)
    tokenizer = AutoTokenizer.from_pretrained(no_dropout_model_dir)
    short = dict(tokenizer(TEXTS[:1], return_tensors="pt"))
    long = dict(tokenizer(TEXTS[:2], padding=True, return_tensors="pt"))
    first = cache.lookup(short)
    both = cache.lookup(long)
    assert len(cache.store) == 2 and cache.hits == 1
    n = int(short["attention_mask"].sum())
    torch.testing.assert_close(both[0, :n], first[0], atol=1e-6, rtol=1e-5)
    assert both[0, n:].abs().sum() == 0  # padding: zeros, hidden by the attention mask
    # The stored value is what the frozen layers compute: the model's hidden states entering layer 1.
    with torch.no_grad():
        hidden = model.bert(**long, output_hidden_states=True).hidden_states[1]
    mask = long["attention_mask"].bool()
    torch.testing.assert_close(both[mask], hidden[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["finetune", "dann"])
def test_linear_probe_with_cache_trains_as_without(recipe, tmp_path, method):
    plain, plain_weights = _train(recipe, tmp_path, "plain", freeze_backbone=True, method=[method], cache_frozen=False)
    cached, cached_weights = _train(recipe, tmp_path, "cached", freeze_backbone=True, method=[method],
                                    cache_frozen=True)
    for name, value in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], value, atol=1e-5, rtol=1e-4, msg=name)
    for key in ("train_loss", "source_accuracy", "source_loss", "target_accuracy"):
        if key in plain.metrics:
            assert cached.metrics[key] == pytest.approx(plain.metrics[key], rel=1e-5, abs=1e-6), key
    if method == "dann":  # the discriminator read the same features (the FeatureTap fired on the cached forward)
        for (name, a), b in zip(plain.trainer.method_stack.named_parameters(),
                                cached.trainer.method_stack.parameters()):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["finetune", "dann"])
def test_top_layer_with_cache_trains_as_without(recipe, tmp_path, method, no_dropout_model_dir):
    plain, plain_weights = _train(recipe, tmp_path, "plain", trainable_layers=1, method=[method], cache_frozen=False)
    cached, cached_weights = _train(recipe, tmp_path, "cached", trainable_layers=1, method=[method],
                                    cache_frozen=True)
    for name, value in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], value, atol=1e-5, rtol=1e-4, msg=name)
    batch = _batch(no_dropout_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(cached.model.eval()(**batch).logits, plain.model.eval()(**batch).logits,
                                   atol=1e-4, rtol=1e-4)
    for key in ("train_loss", "source_accuracy", "target_accuracy"):
        if key in plain.metrics:
            assert cached.metrics[key] == pytest.approx(plain.metrics[key], rel=1e-4, abs=1e-5), key


def test_export_is_an_ordinary_model_that_predicts_as_training_did(recipe, tmp_path, no_dropout_model_dir):
    result, _ = _train(recipe, tmp_path, "cached", trainable_layers=1, cache_frozen=True)
    exported = AutoModelForSequenceClassification.from_pretrained(result.output_dir).eval()
    batch = _batch(no_dropout_model_dir)
    with torch.no_grad():
        expected = exported(**batch).logits
        # What the trained model predicted through the cache, as during training and evaluation.
        model = result.model.eval()
        cache = FrozenPrefixCache(model, first_trainable=1)
        with cache.attached():
            through_cache = model(**batch).logits
    torch.testing.assert_close(through_cache, expected, atol=1e-5, rtol=1e-4)
    # The folder holds the model's weights alone, named as transformers names them.
    assert not any("forward" in m.__dict__ for m in result.model.modules())
    assert set(exported.state_dict()) == set(model.state_dict())


class StepCounter(TrainerCallback):
    def __init__(self):
        self.count = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1


def test_resume_from_a_checkpoint_with_the_cache(recipe, tmp_path):
    fields = dict(freeze_backbone=False, trainable_layers=1, method=["dann"], cache_frozen=True, max_steps=6)
    _, whole = _train(recipe, tmp_path, "whole", **fields)
    _train(recipe, tmp_path, "parts", **fields, save_strategy="steps", save_steps=3)
    checkpoint = tmp_path / "parts" / "checkpoint-3"
    assert checkpoint.is_dir()
    steps = StepCounter()
    result = hf_transfer.train({**recipe, "output_dir": str(tmp_path / "parts"), **fields, "save_strategy": "steps",
                                "save_steps": 3, "resume_from_checkpoint": str(checkpoint)}, callbacks=[steps])
    assert steps.count == 3  # steps 4..6 only: it resumed
    resumed = {n: p.detach() for n, p in result.model.named_parameters()}
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, r"cache_frozen: true cannot hold: no freezing plan"),
        ({"freeze_backbone": True, "method": ["mlm"]}, r"cache_frozen: true cannot hold: method mlm"),
        ({"freeze_backbone": True, "method": ["lwf"]}, r"cache_frozen: true cannot hold: method lwf"),
        ({"trainable_layers": 1, "peft": {"peft_type": "LORA", "r": 2, "target_modules": ["query"]}},
         r"cache_frozen: true cannot hold: a peft block"),
    ],
)
def test_refused_where_it_cannot_hold(recipe, tmp_path, overrides, message):
    with pytest.raises(RecipeError, match=message):
        hf_transfer.train({**recipe, "output_dir": str(tmp_path / "out"), "max_steps": 1, "cache_frozen": True,
                           **overrides})


def test_auto_falls_back_and_says_why(recipe, tmp_path, caplog):
    with caplog.at_level("INFO", logger="hf_transfer.frozen_prefix"):
        result = hf_transfer.train({**recipe, "max_steps": 2, "freeze_backbone": True, "method": ["mlm"]})
    assert result.metrics["train_steps"] == 2
    assert "frozen layers not cached: method mlm" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_transfer.frozen_prefix"):
        hf_transfer.train({**recipe, "output_dir": str(tmp_path / "b"), "max_steps": 2, "freeze_backbone": True})
    assert "training runs only the trainable top" in caplog.text


def test_a_model_the_cut_does_not_fit_is_refused(no_dropout_model_dir):
    """A batch-norm layer in the frozen part (its statistics would move in training mode) is named."""
    model = _model(no_dropout_model_dir, trainable_layers=1)
    model.bert.embeddings.add_module("norm", torch.nn.BatchNorm1d(4))
    model.bert.embeddings.norm.requires_grad_(False)
    assert "batch-norm" in FrozenPrefixCache(model, first_trainable=1).structure_problem()


@pytest.mark.slow
def test_two_processes_with_the_cache_train_like_one_without(no_dropout_model_dir, review_files, tmp_path):
    """DDP on 2 gloo processes (4 rows each), each caching every row, against one process of 8 rows without the
    cache: the same weights (plain SGD, no dropout: round-off only)."""
    import os
    import subprocess
    import sys

    import numpy as np
    import yaml
    from safetensors.numpy import load_file

    from tests.conftest import REPO, accelerate_launch

    base = {"model_name_or_path": no_dropout_model_dir, "source_data": review_files["source"],
            "target_data": review_files["target"], "max_length": 32, "max_steps": 4, "optim": "sgd",
            "learning_rate": 0.05, "warmup_steps": 0, "logging_steps": 1, "seed": 11, "disable_tqdm": True,
            "report_to": "none", "train_sampling_strategy": "random", "save_strategy": "no",
            "per_device_eval_batch_size": 8, "trainable_layers": 1, "method": ["dann"],
            "dann": {"dropout": 0.0, "hidden_size": 16}}
    runs = {"one": ({**base, "per_device_train_batch_size": 8, "cache_frozen": False}, 1),
            "two": ({**base, "per_device_train_batch_size": 4, "cache_frozen": True}, 2)}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for name, (recipe, processes) in runs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / name)}))
        args = ["-m", "hf_transfer", "train", str(path)]
        cmd = [sys.executable, *args] if processes == 1 else accelerate_launch(*args, num_processes=processes)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        if name == "two":
            assert "training runs only the trainable top" in done.stderr
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in runs)
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst <= 1e-5, f"weights differ by up to {worst:.2e}"


def test_a_cache_larger_than_the_free_memory_and_disk_is_refused(recipe, tmp_path, monkeypatch):
    """The estimate (rows x tokens x width x 4 bytes) is checked before anything is computed."""
    from hf_transfer import frozen_prefix

    monkeypatch.setattr(frozen_prefix, "available_memory", lambda: 100_000)
    monkeypatch.setattr(frozen_prefix.shutil, "disk_usage", lambda path: SimpleNamespace(free=100_000))
    with pytest.raises(RecipeError, match=r"cache_frozen: true cannot hold: the cache would take .* GiB"):
        hf_transfer.train({**recipe, "max_steps": 1, "trainable_layers": 1, "cache_frozen": True})
    # The estimate is what the cache then holds.
    monkeypatch.undo()
    cache = FrozenPrefixCache(_model(recipe["model_name_or_path"], trainable_layers=1), first_trainable=1)
    tokenizer = AutoTokenizer.from_pretrained(recipe["model_name_or_path"])
    from datasets import Dataset

    table = Dataset.from_dict(dict(tokenizer(TEXTS)))
    cache.fill([table], tokenizer, show_progress=False)
    assert cache.estimate_bytes([table]) == cache.size_bytes()


def test_a_cache_too_large_for_memory_goes_to_disk(recipe, tmp_path, monkeypatch):
    """Past half the free memory, the hidden states go to a file on disk; training is the same."""
    from hf_transfer import frozen_prefix

    _, in_memory = _train(recipe, tmp_path, "memory", trainable_layers=1, cache_frozen=True)
    monkeypatch.setattr(frozen_prefix, "available_memory", lambda: 100_000)
    monkeypatch.setenv(frozen_prefix.DISK_ENV, str(tmp_path))
    stores = []
    fill = frozen_prefix.FrozenPrefixCache.fill

    def spy(self, *args, **kwargs):
        stores.append(self.store)
        return fill(self, *args, **kwargs)

    monkeypatch.setattr(frozen_prefix.FrozenPrefixCache, "fill", spy)
    _, on_disk = _train(recipe, tmp_path, "disk", trainable_layers=1, cache_frozen=True)
    assert isinstance(stores[0], frozen_prefix.DiskStore) and stores[0].used > 0 and not stores[0].overflow
    assert not any(p.name.startswith("hf_transfer_frozen_") for p in tmp_path.iterdir())  # removed after training
    for name, value in in_memory.items():
        torch.testing.assert_close(on_disk[name], value, atol=1e-6, rtol=1e-5, msg=name)


SENTENCES = [("John Smith lives in Paris .", "B-PER I-PER O O B-LOC O"), ("Mary went to Berlin", "B-PER O O B-LOC"),
             ("Angela Merkel spoke", "B-PER I-PER O"), ("Rome and Madrid are cities", "B-LOC O B-LOC O O"),
             ("Peter saw Anna", "B-PER O B-PER"), ("Nothing happened here", "O O O")]


@pytest.mark.parametrize("plan", [{"freeze_backbone": True}, {"trainable_layers": 1}])
def test_token_classification_with_cache_trains_as_without(recipe, tmp_path, plan):
    """A token classifier reads every position: the probe caches the whole last hidden state, the top-layer plan the
    input of the top layer; padded positions (zeros in the cache) carry no label."""
    conll = tmp_path / "ner.txt"
    conll.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(s.split(), tags.split()))
                                 for s, tags in SENTENCES * 2) + "\n", encoding="utf-8")
    token = {**recipe, "task": "token-classification", "source_data": str(conll), "target_data": str(conll),
             "metrics": ["seqeval"], "selection_validators": [], "source_eval_fraction": 0.0, "max_steps": 4,
             "per_device_train_batch_size": 4, "method": ["dann"], **plan}
    plain, plain_weights = _train(token, tmp_path, "plain", cache_frozen=False)
    cached, cached_weights = _train(token, tmp_path, "cached", cache_frozen=True)
    for name, value in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], value, atol=1e-5, rtol=1e-4, msg=name)
    assert cached.metrics["train_loss"] == pytest.approx(plain.metrics["train_loss"], rel=1e-5)
