"""Training paths of the token-classification task beyond plain fine-tuning: the masked-LM loss on target sentences
alongside the tagger (``method: mlm``), MMD and CORAL on token rows, a LoRA tagger loaded with plain peft and
transformers, and ``hf-transfer evaluate`` on a tagger against the ``seqeval`` library."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_token_classification import TAGS, TARGET, files, token_recipe, write_conll  # noqa: F401  (fixtures)


def test_mlm_alongside_the_tagger(token_recipe, monkeypatch):  # noqa: F811
    import hf_transfer
    from hf_transfer.methods.mlm import LABELS_KEY, POSITIONS_KEY, MaskedLMCollator
    from hf_transfer.trainer import TransferTrainer

    batches = []
    original = MaskedLMCollator.__call__

    def record(self, rows):
        batch = original(self, rows)
        if "domain" in batch:
            batches.append(batch)
        return batch

    losses = []
    original_loss = TransferTrainer.compute_loss

    def remember(self, model, inputs, *args, **kwargs):
        loss = original_loss(self, model, inputs, *args, **kwargs)
        losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss

    monkeypatch.setattr(MaskedLMCollator, "__call__", record)
    monkeypatch.setattr(TransferTrainer, "compute_loss", remember)
    result = hf_transfer.train({**token_recipe, "method": ["mlm"], "max_steps": 3,
                                "mlm": {"mlm_probability": 0.5}})
    assert batches
    for batch in batches:
        rows = batch["labels"].shape[0]  # source + target sentences; the masked copies of the target come after
        targets = int((batch["domain"] == 1).sum())
        assert batch["input_ids"].shape[0] == rows + targets
        assert batch["labels"].shape[1] == batch["input_ids"].shape[1]
        assert batch[POSITIONS_KEY].numel() > 0 and (batch[POSITIONS_KEY] >= rows * batch["input_ids"].shape[1]).all()
        assert batch[LABELS_KEY].shape == batch[POSITIONS_KEY].shape
    logged = [e["mlm/loss"] for e in result.trainer.state.log_history if "mlm/loss" in e]
    assert len(logged) == 3 and all(np.isfinite(v) and v > 0 for v in logged)
    assert all(np.isfinite(v) for v in losses)
    # The export is a plain tagger: no MLM head in its weights.
    from safetensors import safe_open
    from transformers import AutoModelForTokenClassification

    with safe_open(str(result.output_dir / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "mlm" in k or "predictions" in k]
    model = AutoModelForTokenClassification.from_pretrained(result.output_dir)
    assert list(model.config.id2label.values()) == TAGS


@pytest.mark.parametrize("method", ["mmd", "coral"])
def test_mmd_and_coral_on_token_rows(token_recipe, method, monkeypatch):  # noqa: F811
    import hf_transfer
    from hf_transfer.trainer import TransferTrainer

    seen = []
    original = TransferTrainer.method_loss

    def record(self, logits, features, labels, domain, sample_weight, inputs, extras, terms):
        seen.append((features.shape[0], int(inputs["attention_mask"].sum()), int((domain == 0).sum()),
                     int((domain == 1).sum())))
        return original(self, logits, features, labels, domain, sample_weight, inputs, extras, terms)

    monkeypatch.setattr(TransferTrainer, "method_loss", record)
    result = hf_transfer.train({**token_recipe, "method": [method], "max_steps": 2})
    assert len(seen) == 2
    for rows, tokens, source, target in seen:
        assert rows == tokens and source > 0 and target > 0  # every non-padding token of both domains is a row
    logged = [e[f"{method}/loss"] for e in result.trainer.state.log_history if f"{method}/loss" in e]
    assert logged and all(np.isfinite(v) for v in logged)


LORA_LOADER = r"""
import json, sys
import torch
from peft import AutoPeftModelForTokenClassification
from transformers import AutoTokenizer, pipeline

folder = sys.argv[1]
labels = json.load(open(f"{folder}/classifier_config.json"))
id2label = {int(k): v for k, v in labels["id2label"].items()}
model = AutoPeftModelForTokenClassification.from_pretrained(
    folder, id2label=id2label, label2id={v: k for k, v in id2label.items()}).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(**tokenizer(["John Smith visited Paris"], return_tensors="pt")).logits[0].tolist()
plain = model.merge_and_unload()
with torch.no_grad():  # every word B-PER: the pipeline must group words into entities named by id2label
    plain.classifier.weight.zero_()
    plain.classifier.bias.copy_(torch.tensor([10.0 if id2label[i] == "B-PER" else 0.0 for i in range(len(id2label))]))
tagger = pipeline("token-classification", model=plain, tokenizer=tokenizer, aggregation_strategy="simple")
assert "hf_transfer" not in sys.modules
print(json.dumps({"logits": logits, "groups": sorted({e["entity_group"] for e in tagger("John Smith visited Paris")}),
                  "labels": list(plain.config.id2label.values())}))
"""


def test_lora_tagger_loads_with_plain_peft(token_recipe):  # noqa: F811
    import hf_transfer

    result = hf_transfer.train({**token_recipe, "peft": {"peft_type": "LORA", "r": 4,
                                                         "target_modules": ["query", "value"]}})
    out = result.output_dir
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "TOKEN_CLS" and "classifier" in (config.get("modules_to_save") or [])
    card = (out / "README.md").read_text()
    assert "AutoPeftModelForTokenClassification" in card and "aggregation_strategy" in card
    model = result.trainer.model.eval()
    with torch.no_grad():
        expected = model(**result.tokenizer(["John Smith visited Paris"], return_tensors="pt")).logits[0]
    proc = subprocess.run([sys.executable, "-c", LORA_LOADER, str(out)], capture_output=True, text=True, check=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, atol=1e-5, rtol=1e-4)
    assert loaded["labels"] == TAGS and loaded["groups"] == ["PER"]


def test_evaluate_a_tagger_against_seqeval(token_recipe, files, tmp_path):  # noqa: F811
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    import hf_transfer
    from hf_transfer.cli import main
    from hf_transfer.tasks.token_classification import read_conll

    trained = hf_transfer.train({**token_recipe, "target_data": None}).output_dir
    # A copy with a random head, so that it predicts entities of both types, some right and some wrong.
    folder = tmp_path / "tagger"
    shutil.copytree(trained, folder)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    torch.manual_seed(3)
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)
        model.classifier.bias.normal_()
    model.save_pretrained(folder)
    data = write_conll(tmp_path / "eval.txt", TARGET * 5)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["evaluate", str(folder), "--data", data, "--bootstrap_resamples", "200", "--batch_size", "3",
                     "--disable_tqdm"]) == 0
    out = json.loads(printed.getvalue())

    # The reference: the model's tag for the first sub-word of each word, scored by the seqeval library.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    table = read_conll(data)
    true, pred = [], []
    model.eval()
    for words, tags in zip(table["tokens"], table["ner_tags"]):
        enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            ids = model(**enc).logits[0].argmax(-1).tolist()
        firsts, previous = [], None
        for position, word in enumerate(enc.word_ids()):
            if word is not None and word != previous:
                firsts.append(model.config.id2label[ids[position]])
            previous = word
        true.append(tags)
        pred.append(firsts)
    assert out["num_examples"] == len(true) == 20
    assert out["precision"] == pytest.approx(precision_score(true, pred))
    assert out["recall"] == pytest.approx(recall_score(true, pred))
    assert out["f1"] == pytest.approx(f1_score(true, pred))
    report = classification_report(true, pred, output_dict=True)
    for kind in ("PER", "LOC"):
        for metric, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert out[f"{kind}_{metric}"] == pytest.approx(report[kind][key])
            assert out[f"{kind}_{metric}_ci_low"] <= out[f"{kind}_{metric}"] + 1e-9
            assert out[f"{kind}_{metric}"] <= out[f"{kind}_{metric}_ci_high"] + 1e-9
    assert out["f1_ci_low"] <= out["f1"] <= out["f1_ci_high"] and out["f1_ci_low"] < out["f1_ci_high"]
    assert 0 < out["f1"] < 1  # the random head gets some entities right, not all

    # A tag the model does not know is one line naming the row, before any scoring.
    from hf_transfer.errors import DataError

    bad = write_conll(tmp_path / "bad.txt", [("IBM hired Bob", "B-ORG O B-PER")])
    with pytest.raises(DataError, match=r"bad.txt.* row 0 has tag 'B-ORG', which is not in the label set"):
        hf_transfer.evaluate(str(folder), bad, bootstrap_resamples=0, disable_tqdm=True)
