"""A contrastive few-shot classifier exports as a SetFit folder: SetFitModel.from_pretrained loads it and predicts as
in memory; so do plain transformers with the pickle-free head; the card records K, the episodes and the interval."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_transfer.meta.contrastive import contrastive_adapt
from hf_transfer.meta.protonet import Embedder
from hf_transfer.meta.setfit_export import save_setfit
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["good great fine", "great good nice", "nice fine good", "fine nice great",
         "bad awful poor", "poor bad terrible", "terrible awful bad", "awful poor terrible"]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]
QUERIES = ["good nice", "awful bad", "fine great good good", "poor", "nice awful", "terrible great"]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    clf = contrastive_adapt(Embedder(AutoModel.from_pretrained(tiny_model_dir)), batch, LABELS, iterations=10,
                            lr=1e-3, epochs=2, seed=0)
    folder = tmp_path_factory.mktemp("export") / "setfit"
    save_setfit(clf, tokenizer, folder, labels=None, max_length=64, metrics={"8shot_accuracy": 1.0},
                card="---\nlibrary_name: setfit\n---\n\n# card\n")
    queries = dict(tokenizer(QUERIES, padding=True, return_tensors="pt"))
    return folder, clf.predict(queries), clf.features(queries)


def test_setfit_loads_it_and_predicts_the_same(exported):
    pytest.importorskip("setfit")
    from setfit import SetFitModel

    folder, expected, features = exported
    model = SetFitModel.from_pretrained(str(folder))
    np.testing.assert_allclose(model.encode(QUERIES), features, atol=1e-5)  # Normalize module: unit rows
    np.testing.assert_array_equal(np.asarray(model.predict(QUERIES)), expected)
    assert (expected == 1).any() and (expected == 0).any()  # a real two-class answer, not a constant


def test_plain_transformers_and_the_safetensors_head_predict_the_same(exported):
    """No hf_transfer, no sentence-transformers, no pickle: AutoModel, mean pooling, normalisation, the head's
    arrays (run in a fresh interpreter that never imports hf_transfer)."""
    folder, expected, _ = exported
    code = f"""
import json, sys, numpy as np, torch
from safetensors.numpy import load_file
from transformers import AutoModel, AutoTokenizer
folder = {str(folder)!r}
tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
batch = tok({QUERIES!r}, padding=True, truncation=True, max_length=64, return_tensors="pt")
with torch.no_grad():
    h = model(**batch).last_hidden_state
m = batch["attention_mask"].unsqueeze(-1).float()
e = ((h * m).sum(1) / m.sum(1)).numpy()
e = e / np.linalg.norm(e, axis=1, keepdims=True)
head = load_file(folder + "/model_head.safetensors")
s = e @ head["weight"].T + head["bias"]
pred = head["classes"][(s[:, 0] > 0).astype(int)] if s.shape[1] == 1 else head["classes"][s.argmax(1)]
assert "hf_transfer" not in sys.modules
print(json.dumps(pred.tolist()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected.tolist()


def test_sentence_transformer_layout(exported):
    folder = exported[0]
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert json.loads((folder / "config_setfit.json").read_text()) == {"normalize_embeddings": False, "labels": None}
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 64


def test_evaluate_exports_episode_zero_with_its_card(tiny_model_dir, tmp_path):
    """few_shot_evaluate(..., adapt="contrastive", export=DIR): the folder's classifier is the one episode 0 scored
    (same accuracy), and its card and metrics.json record K, every episode's accuracy and the interval."""
    from hf_transfer.meta import mean_confidence_interval
    from hf_transfer.meta.trainer import few_shot_evaluate

    rng = np.random.default_rng(0)
    words = {1: ["good", "great", "fine", "nice"], 0: ["bad", "awful", "poor", "terrible"]}
    rows = [{"text": " ".join(rng.choice(words[y], 3)), "label": "pos" if y else "neg"} for y in [0, 1] * 12]
    data = write_jsonl(tmp_path / "train.jsonl", rows[:16])
    query = write_jsonl(tmp_path / "test.jsonl", rows[16:])
    out = few_shot_evaluate(tiny_model_dir, str(data), query_data=str(query), shots=4, episodes=2, n_query=4,
                            adapt="contrastive", export=str(tmp_path / "fewshot"), max_length=32,
                            contrastive_iterations=3, contrastive_lr=1e-3)
    folder = Path(out["export"])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["shots"] == 4 and metrics["episodes"] == 2
    mean, half = mean_confidence_interval(metrics["accuracies"])
    assert metrics["accuracy"] == pytest.approx(mean) and metrics["ci95"] == pytest.approx(half)
    assert metrics["exported_episode"]["accuracy"] == pytest.approx(out["accuracies"][0])
    assert len(metrics["exported_episode"]["support"]) == 8
    card = (folder / "README.md").read_text()
    assert "K = 4 labelled rows per class" in card and f"{out['accuracy']:.4f} ± {out['ci95']:.4f}" in card
    assert "library_name: setfit" in card and "--adapt contrastive" in card
    assert json.loads((folder / "config_setfit.json").read_text())["labels"] == ["neg", "pos"]
    pytest.importorskip("setfit")
    from setfit import SetFitModel

    model = SetFitModel.from_pretrained(str(folder))
    texts = [r["text"] for r in rows[16:]]
    truth = np.array([r["label"] for r in rows[16:]])
    # episode 0 queries 4 rows per class of the 8-row test file: all of them, so accuracy over the file is its own
    assert float((np.asarray(model.predict(texts)) == truth).mean()) == pytest.approx(
        metrics["exported_episode"]["accuracy"])


def test_export_needs_contrastive(tiny_model_dir, tmp_path):
    from hf_transfer.errors import UserError
    from hf_transfer.meta.trainer import few_shot_evaluate

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": y} for t, y in zip(TEXTS, LABELS)])
    with pytest.raises(UserError, match="--adapt contrastive"):
        few_shot_evaluate(tiny_model_dir, str(data), shots=2, episodes=2, n_query=1, adapt="probe",
                          export=str(tmp_path / "x"))
