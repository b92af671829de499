"""Shared fixtures: tiny random models built from a config (milliseconds, no download) and small review files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# The before/after t-SNE every training run with a target writes costs seconds a run; its own test turns it on.
os.environ.setdefault("HF_TRANSFER_TSNE_PLOT", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESOURCES = REPO / "hf_transfer" / "resources"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save_tiny_bert(folder: Path, **config) -> str:
    """A 2-layer, 32-wide BERT with random weights (seed 0) and the real MiniLM tokenizer, saved in ``folder``;
    ``config`` overrides BertConfig fields."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_transfer.backbones import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    fields = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(BertConfig(**{**fields, **config})).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with random weights and the real MiniLM tokenizer, saved as a local folder."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def no_dropout_model_dir(tmp_path_factory) -> str:
    """The tiny BERT without dropout (whose masks are per-process random draws), for tests that compare a
    several-process run with a one-process run; wider initial weights make features differ between rows (at the
    default 0.02 every row's feature is nearly the same, and MMD's kernel bandwidth is ~1e-6, where round-off alone
    changes the loss)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, initializer_range=0.5)


def accelerate_launch(*args: str, num_processes: int = 2) -> list[str]:
    """The command that runs ``args`` (``-m hf_transfer train ...`` or a script) under ``accelerate launch`` with
    recipes/accelerate/multi_cpu.yaml: ``num_processes`` gloo processes on the CPU."""
    import sys

    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "recipes/accelerate/multi_cpu.yaml"), "--num_processes", str(num_processes), *args]


@pytest.fixture(scope="session")
def review_files(tmp_path_factory) -> dict[str, str]:
    """Small labelled source / target review files cut from the shipped demo data."""
    folder = tmp_path_factory.mktemp("reviews")
    books = read_jsonl(RESOURCES / "amazon_books_demo.jsonl")
    kitchen = read_jsonl(RESOURCES / "amazon_kitchen_demo.jsonl")
    rng = random.Random(0)
    rng.shuffle(books)
    rng.shuffle(kitchen)
    return {
        "source": str(write_jsonl(folder / "books.jsonl", books[:96])),
        "target": str(write_jsonl(folder / "kitchen.jsonl", kitchen[:64])),
    }


@pytest.fixture
def tiny_recipe(tiny_model_dir, review_files, tmp_path) -> dict:
    """A recipe that trains the tiny model for a few steps; tests override what they exercise."""
    return {
        "model_name_or_path": tiny_model_dir,
        "source_data": review_files["source"],
        "target_data": review_files["target"],
        "max_length": 64,
        "output_dir": str(tmp_path / "out"),
        "max_steps": 4,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "logging_steps": 2,
        "use_cpu": True,
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
    }
