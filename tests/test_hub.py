"""Hub: tokens never reach disk; the real push runs only when a token, a test repo and the network exist."""

import os
from pathlib import Path

import pytest

import hf_transfer

FAKE_TOKEN = "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"


def test_token_is_never_written(tiny_recipe):
    result = hf_transfer.train({**tiny_recipe, "hub_token": FAKE_TOKEN, "save_strategy": "steps", "save_steps": 4})
    for path in Path(result.output_dir).rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".md", ".txt"}:
            assert FAKE_TOKEN not in path.read_text(errors="ignore"), path


@pytest.mark.hub
@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("HF_TRANSFER_TEST_HUB_REPO")),
    reason="set HF_TOKEN and HF_TRANSFER_TEST_HUB_REPO (a repo you own) to run the real push",
)
def test_real_push_and_pull(tiny_recipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    repo = os.environ["HF_TRANSFER_TEST_HUB_REPO"]
    result = hf_transfer.train({**tiny_recipe, "push_to_hub": True, "hub_model_id": repo, "hub_private_repo": True})
    from huggingface_hub import snapshot_download
    from transformers import pipeline

    local = snapshot_download(repo)
    assert {"config.json", "README.md", "recipe.yaml", "metrics.json"} <= set(os.listdir(local))
    assert not any(name.startswith("checkpoint-") for name in os.listdir(local))
    assert pipeline("text-classification", model=local)("fine")[0]["label"]
    assert result.metrics["train_steps"] == tiny_recipe["max_steps"]
