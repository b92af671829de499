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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with random weights and the real MiniLM tokenizer, saved as a local folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_transfer.backbones import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


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
