"""The token-classification task (hf_transfer/tasks/token_classification.py): CoNLL files and Hub columns in, every
bad sentence refused before training, sub-word labels aligned as transformers' example does, the loss against
transformers', entity metrics against the ``seqeval`` library, a trained tagger exported and reloaded through
``pipeline("token-classification")`` in a fresh process, and DANN on token rows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_transfer.data import load_raw_data, prepare_data
from hf_transfer.errors import DataError, RecipeError
from hf_transfer.recipe import load_recipe
from hf_transfer.tasks import get_task
from hf_transfer.tasks.token_classification import TokenMetrics, align_labels, read_conll
from tests.conftest import REPO

SOURCE = [
    ("John Smith lives in Paris .", "B-PER I-PER O O B-LOC O"),
    ("Mary went to Berlin", "B-PER O O B-LOC"),
    ("The Eurosceptic party met in London", "O O O O O B-LOC"),
    ("Angela Merkel spoke", "B-PER I-PER O"),
    ("Rome and Madrid are cities", "B-LOC O B-LOC O O"),
    ("Peter saw Anna", "B-PER O B-PER"),
    ("Nothing happened here", "O O O"),
    ("New York is big", "B-LOC I-LOC O O"),
]
TARGET = [
    ("Senator Obama visited Ohio", "O B-PER O B-LOC"),
    ("Voters in Texas chose Bush", "O O B-LOC O B-PER"),
    ("The election was close", "O O O O"),
    ("Clinton spoke in Iowa today", "B-PER O O B-LOC O"),
]
TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # the order a run gives them: O, then by type, B- before I-


def write_conll(path, sentences, *, sep="\t") -> str:
    blocks = ["\n".join(f"{w}{sep}{t}" for w, t in zip(s.split(), tags.split())) for s, tags in sentences]
    path.write_text("-DOCSTART-\tO\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return str(path)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    return {"source": write_conll(tmp_path / "source.txt", SOURCE * 2),
            "target": write_conll(tmp_path / "target.txt", TARGET * 2)}


@pytest.fixture
def token_recipe(tiny_model_dir, files, tmp_path) -> dict:
    return {"model_name_or_path": tiny_model_dir, "task": "token-classification", "source_data": files["source"],
            "target_data": files["target"], "metrics": ["seqeval"], "selection_validators": [], "max_length": 32,
            "output_dir": str(tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 8, "learning_rate": 1e-3, "save_strategy": "no", "logging_steps": 1,
            "use_cpu": True, "dataloader_pin_memory": False, "disable_tqdm": True, "source_eval_fraction": 0.0}


# ---- reading and checking ------------------------------------------------------------------------------------------


def test_reads_conll_and_hub_columns(tmp_path, files, token_recipe):
    table = read_conll(files["source"])
    assert len(table) == 16 and table[0] == {"tokens": SOURCE[0][0].split(), "ner_tags": SOURCE[0][1].split()}
    # Space-separated CoNLL (the original CoNLL-2003 layout) reads the same.
    assert read_conll(write_conll(tmp_path / "spaces.txt", SOURCE, sep=" "))[:] == read_conll(files["source"])[:8]
    raw = load_raw_data(load_recipe(token_recipe).data)
    assert raw.labels.names == TAGS
    assert raw.source[0]["labels"] == [TAGS.index(t) for t in SOURCE[0][1].split()]
    assert raw.eval is not None and len(raw.eval) == 8  # the target's own tags evaluate it
    # The Hub's columns, with tags as ids named by class_names.
    rows = [{"tokens": s.split(), "ner_tags": [TAGS.index(t) for t in tags.split()]} for s, tags in SOURCE]
    hub = write_jsonl(tmp_path / "hub.jsonl", rows)
    raw = load_raw_data(load_recipe({**token_recipe, "source_data": hub, "target_data": None,
                                     "class_names": TAGS}).data)
    assert raw.labels.names == TAGS and raw.source[3]["labels"] == rows[3]["ner_tags"]
    with pytest.raises(DataError, match="class_names"):  # ids without names
        load_raw_data(load_recipe({**token_recipe, "source_data": hub, "target_data": None}).data)


@pytest.mark.parametrize("case, match", [
    ("length", r"row 1 has 3 tags for 4 words"),
    ("empty", r"row 1 is an empty sentence"),
    ("unknown", r"row 0 has tag 'B-ORG', which is not in the label set"),
    ("inside", r"row 0 word 1 has tag 'I-LOC' with no B-LOC before it"),
    ("line", r"line 2 .* is not 'word<TAB>tag'"),
])
def test_bad_inputs_are_refused_before_training(tmp_path, files, token_recipe, case, match):
    recipe = {**token_recipe, "target_data": None}
    if case == "length":
        rows = [{"tokens": ["a", "b"], "ner_tags": ["O", "B-PER"]}, {"tokens": list("abcd"), "ner_tags": ["O"] * 3}]
        recipe["source_data"] = write_jsonl(tmp_path / "bad.jsonl", rows)
    elif case == "empty":
        rows = [{"tokens": ["a", "b"], "ner_tags": ["O", "B-PER"]}, {"tokens": [], "ner_tags": []}]
        recipe["source_data"] = write_jsonl(tmp_path / "bad.jsonl", rows)
    elif case == "unknown":  # the eval file has a type the source never had
        recipe["eval_data"] = write_conll(tmp_path / "bad.txt", [("IBM hired Bob", "B-ORG O B-PER")])
    elif case == "inside":
        recipe["source_data"] = write_conll(tmp_path / "bad.txt", [("in Paris", "O I-LOC"), *SOURCE])
    else:
        (tmp_path / "bad.txt").write_text("a\tO\nlonely\n", encoding="utf-8")
        recipe["source_data"] = str(tmp_path / "bad.txt")
    with pytest.raises(DataError, match=match) as err:
        load_raw_data(load_recipe(recipe).data)
    assert "bad." in str(err.value) and "\n" not in str(err.value)  # one line, naming the file


def test_recipe_refusals(token_recipe):
    task = get_task("token-classification")
    assert (task.pipeline_tag, task.auto_class_name, task.peft_task_type) == \
        ("token-classification", "AutoModelForTokenClassification", "TOKEN_CLS")
    with pytest.raises(RecipeError, match="not a tagging metric"):
        load_recipe({**token_recipe, "metrics": ["binary_f1"]})
    with pytest.raises(RecipeError, match="selection_validators"):
        load_recipe({**token_recipe, "selection_validators": ["entropy"]})
    with pytest.raises(RecipeError, match="text_pair_column"):
        load_recipe({**token_recipe, "text_pair_column": "other"})


# ---- alignment, loss, metrics --------------------------------------------------------------------------------------


def test_sub_word_alignment_by_hand(token_recipe):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(token_recipe["model_name_or_path"])
    recipe = load_recipe({**token_recipe, "target_data": None})
    raw = load_raw_data(recipe.data)
    data = prepare_data(raw, tokenizer, recipe.data)
    row = next(r for r in data.train if r["labels"].count(-100) > 2)  # a sentence with a word of several pieces
    words = tokenizer.convert_ids_to_tokens(row["input_ids"])
    source = read_conll(token_recipe["source_data"])
    sentence = next(s for s in source if tokenizer(s["tokens"], is_split_into_words=True)["input_ids"]
                    == row["input_ids"])
    # By hand: [CLS] -100; each word's first piece its tag, its other pieces -100; [SEP] -100.
    expected = [-100]
    for word, tag in zip(sentence["tokens"], sentence["ner_tags"]):
        pieces = tokenizer.tokenize(word)
        expected += [TAGS.index(tag)] + [-100] * (len(pieces) - 1)
    expected.append(-100)
    assert words[0] == "[CLS]" and words[-1] == "[SEP]" and row["labels"] == expected
    assert align_labels([None, 0, 0, 1, None], [3, 1]) == [-100, 3, -100, 1, -100]
    # The collator pads labels with -100, and target rows are all -100 with domain 1.
    collate = get_task("token-classification").collator(tokenizer)
    rows = [dict(data.train[0]), dict(data.train[1])]
    rows = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows]
    rows[0]["target_input_ids"], rows[0]["target_attention_mask"] = [101, 7592, 102], [1, 1, 1]
    rows[1]["target_input_ids"], rows[1]["target_attention_mask"] = [101, 102], [1, 1]
    batch = collate(rows)
    length = batch["input_ids"].shape[1]
    assert batch["labels"].shape == (4, length) and batch["domain"].tolist() == [0, 0, 1, 1]
    for i in range(2):
        n = len(rows[i]["labels"])
        assert batch["labels"][i, :n].tolist() == rows[i]["labels"] and (batch["labels"][i, n:] == -100).all()
    assert (batch["labels"][2:] == -100).all()


def test_loss_is_transformers_token_loss(tiny_model_dir):
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=5).eval()
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 7))
    labels = torch.randint(0, 5, (3, 7))
    labels[:, 0] = labels[:, -1] = -100
    labels[2, 3:] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    task = get_task("token-classification")
    labelled = task.labelled_rows(labels)
    assert labelled.tolist() == [True, True, True]
    loss = task.task_loss(out.logits, labels, labelled, torch.ones(3), global_batch=False)
    assert torch.allclose(loss, out.loss, atol=1e-6)
    # A sentence's weight applies to each of its tokens.
    w = torch.tensor([1.0, 0.0, 2.0])
    per_token = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), reduction="none",
                                                  ignore_index=-100).view(3, 7)
    mask = (labels != -100).float() * w[:, None]
    assert torch.allclose(task.task_loss(out.logits, labels, labelled, w, global_batch=False),
                          (per_token * mask).sum() / mask.sum(), atol=1e-6)


def test_metrics_match_seqeval():
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(40, 9))
    labels[:, 0] = -100
    labels[rng.random(labels.shape) < 0.1] = -100
    logits = rng.normal(size=(40, 9, 5))
    metrics = TokenMetrics(dict(enumerate(TAGS)))
    pred, true = metrics.sentences(logits, labels)
    keep = labels != -100
    assert pred[0] == [TAGS[i] for i in logits[0].argmax(-1)[keep[0]]]
    values = metrics.compute(logits, labels)
    assert values["precision"] == pytest.approx(precision_score(true, pred))
    assert values["recall"] == pytest.approx(recall_score(true, pred))
    assert values["f1"] == pytest.approx(f1_score(true, pred))
    assert values["accuracy"] == pytest.approx(accuracy_score(true, pred))
    per_type = f1_score(true, pred, average=None)
    assert [values["LOC_f1"], values["PER_f1"]] == pytest.approx(list(per_type))
    intervals = metrics.intervals(logits, labels, num_resamples=50, confidence=0.9)
    low, high = intervals["f1"]
    assert low <= values["f1"] <= high


# ---- end to end ----------------------------------------------------------------------------------------------------

FRESH_PROCESS = """
import json, sys
from transformers import pipeline
out = {}
for folder in sys.argv[1:]:
    tagger = pipeline("token-classification", model=folder, aggregation_strategy="simple")
    out[folder] = {"labels": list(tagger.model.config.id2label.values()),
                   "entities": [[e["entity_group"], e["word"]] for e in tagger("John Smith visited Paris")]}
print(json.dumps(out))
"""


def test_train_export_and_pipeline(token_recipe, tmp_path):
    from transformers import AutoModelForTokenClassification

    import hf_transfer

    result = hf_transfer.train(token_recipe)
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("target_precision", "target_recall", "target_f1", "target_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    logged = [e["task_loss"] for e in result.trainer.state.log_history if "task_loss" in e]
    assert len(logged) == 3 and all(v > 0 for v in logged)
    assert "pipeline_tag: token-classification" in (out / "README.md").read_text()
    # A copy whose head tags every word B-PER: the pipeline must group the words into PER entities by name.
    model = AutoModelForTokenClassification.from_pretrained(out)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0, 0.0]))
    forced = tmp_path / "forced"
    model.save_pretrained(forced)
    result.tokenizer.save_pretrained(forced)
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(forced)], capture_output=True,
                          text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh[str(out)]["labels"] == TAGS
    assert all(group in {"PER", "LOC"} for group, _ in fresh[str(out)]["entities"])
    assert fresh[str(forced)]["entities"] == [["PER", "john"], ["PER", "smith"], ["PER", "visited"],
                                              ["PER", "paris"]]


def test_dann_sees_one_row_per_token_of_both_domains(token_recipe, monkeypatch):
    import hf_transfer
    from hf_transfer.trainer import TransferTrainer

    seen = []
    original = TransferTrainer.method_loss

    def record(self, logits, features, labels, domain, sample_weight, inputs, extras, terms):
        mask = inputs["attention_mask"].bool()
        per_domain = [int(mask[self._last_domain == d].sum()) for d in (0, 1)]
        seen.append({"rows": features.shape[0], "tokens": int(mask.sum()), "per_domain": per_domain,
                     "domain_rows": [int((domain == d).sum()) for d in (0, 1)], "width": features.shape[1],
                     "logits": tuple(logits.shape), "weight_sum": float(sample_weight.sum()),
                     "sentences": mask.shape[0], "labelled": int((labels != -100).sum()),
                     "word_starts": self._last_words})
        return original(self, logits, features, labels, domain, sample_weight, inputs, extras, terms)

    original_loss = TransferTrainer.compute_loss

    def remember(self, model, inputs, *args, **kwargs):
        if "domain" in inputs:  # a training batch (evaluation batches hold one domain and no domain column)
            self._last_domain = inputs["domain"].clone()
            self._last_words = int(((inputs["labels"] != -100) & (inputs["domain"] == 0)[:, None]).sum())
        return original_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(TransferTrainer, "method_loss", record)
    monkeypatch.setattr(TransferTrainer, "compute_loss", remember)
    result = hf_transfer.train({**token_recipe, "method": ["dann"], "max_steps": 2})
    assert len(seen) == 2
    for step in seen:
        assert step["rows"] == step["tokens"]  # one row per non-padding token
        assert step["domain_rows"] == step["per_domain"] and min(step["per_domain"]) > 0  # of both domains
        assert step["width"] == 32 and step["logits"] == (step["rows"], 5)
        assert step["weight_sum"] == pytest.approx(step["sentences"])  # 1 / tokens of its sentence, per token
        assert step["labelled"] == step["word_starts"]  # source word starts keep their tags; the rest -100
    logs = [e for e in result.trainer.state.log_history if "dann/loss" in e]
    assert logs and all(np.isfinite(e["dann/loss"]) for e in logs)


def test_shipped_recipes_load():
    folder = REPO / "recipes" / "token_classification"
    paths = sorted(folder.glob("*.yaml"))
    assert {p.name for p in paths} >= {"finetune.yaml", "dann.yaml", "mmd.yaml", "coral.yaml", "lora.yaml",
                                       "conll_source.yaml", "politics_from_conll.yaml", "mlm_politics.yaml",
                                       "union_politics.yaml"}
    for path in paths:
        recipe = load_recipe(str(path))
        assert recipe.data.resolved_task.name == "token-classification"
        assert recipe.data.text_column == "tokens" and recipe.data.label_column == "ner_tags"


@pytest.mark.parametrize("method", ["instance_weighting", "lwf", "graph_laplacian"])
def test_methods_not_carried_to_token_rows_are_refused(method):
    with pytest.raises(RecipeError, match=rf"^method: {method} is not available for task token-classification"):
        load_recipe({"task": "token-classification", "method": method, "target_data": None,
                     "selection_validators": []})
