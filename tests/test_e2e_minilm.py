"""End to end on the real packaged all-MiniLM-L6-v2: the issue's acceptance runs, shortened for CPU.

The target is a review domain that is not in ../shared/data: restaurant reviews written for this project
(tests/data/restaurant_reviews.jsonl), 60 positive and 60 negative.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESTAURANTS = REPO / "tests" / "data" / "restaurant_reviews.jsonl"
BOOKS = REPO / "hf_transfer" / "resources" / "amazon_books_demo.jsonl"


def run(cmd, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": "", **(env_extra or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    return out.stdout


@pytest.mark.slow
def test_finetune_recipe_transfers_to_an_unseen_domain_and_pipeline_loads(tmp_path):
    # max_length 64: the restaurant reviews are 26 words at most, so their evaluation and the pipeline below see
    # every token; the book reviews train on their first 64 tokens, half the work of 128 (target accuracy measured
    # 0.81 over the 0.75 asked).
    out_dir = tmp_path / "books2restaurants"
    run([sys.executable, "-m", "hf_transfer", "train", str(REPO / "recipes/text_classification/finetune.yaml"),
         "--source_data", str(BOOKS), "--target_data", str(RESTAURANTS), "--output_dir", str(out_dir),
         "--max_steps", "80", "--max_length", "64", "--save_strategy", "no", "--disable_tqdm", "true"],
        cwd=REPO, env_extra={"PYTHONPATH": str(REPO)})
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 80
    # chance is 0.5 on this balanced set; the frozen-embedding baseline in ../shared/data/README.md is 0.68-0.82
    assert metrics["target_accuracy"] >= 0.75, metrics
    # a process that never imports hf_transfer loads it with pipeline() and gets the same accuracy
    printed = run([sys.executable, "-c", f"""
import json, sys
from transformers import pipeline
clf = pipeline("text-classification", model={str(out_dir)!r})
rows = [json.loads(line) for line in open({str(RESTAURANTS)!r})]
preds = clf([r["text"] for r in rows], truncation=True, max_length=128, batch_size=32)
names = {{"negative": 0, "positive": 1}}
print(sum(names[p["label"]] == r["label"] for p, r in zip(preds, rows)) / len(rows))
assert not any(m.startswith("hf_transfer") for m in sys.modules)
"""], cwd=tmp_path)
    assert float(printed.strip()) == pytest.approx(metrics["target_accuracy"], abs=1 / 120 + 1e-9)
