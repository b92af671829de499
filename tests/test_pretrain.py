"""The pretrain family (hf_transfer/pretrain): continued masked-LM training on unlabelled text, exported as a plain
masked-LM folder that task recipes start from. Tiny random BERTs, a few steps each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import hf_transfer
from hf_transfer.errors import RecipeError
from hf_transfer.families import family_for_keys
from hf_transfer.pretrain import PretrainRecipe, looks_like_conll, read_texts
from hf_transfer.pretrain.data import split_held_out
from hf_transfer.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]

WORDS = ("the blender chops ice well and the kettle boils water fast while the knife stays sharp after many "
         "months of daily use in a small kitchen").split()


def _lines(count: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(count)]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "kitchen.txt"
    path.write_text("\n".join(_lines(48)) + "\n\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def recipe(tiny_model_dir, text_file, tmp_path) -> dict:
    return {
        "model_name_or_path": tiny_model_dir,
        "train_data": [text_file],
        "eval_fraction": 0.25,
        "max_length": 32,
        "output_dir": str(tmp_path / "out"),
        "max_steps": 4,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 5,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
    }


def _keys(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return set(handle.keys())


def _tensor(folder: Path, key: str) -> torch.Tensor:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return handle.get_tensor(key)


def _reference_eval_loss(model, dataset) -> float:
    """The mean cross-entropy over every masked token of ``dataset``, one row at a time, from the full logits."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           token_type_ids=torch.tensor([row["token_type_ids"]])).logits[0]
            total += F.cross_entropy(logits.double(), labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


def test_a_recipe_with_train_data_is_a_pretrain_recipe():
    assert family_for_keys(["train_data", "max_steps"]).name == "pretrain"
    for path in ("recipes/pretrain/dapt.yaml", "recipes/pretrain/dapt_politics.yaml"):
        parsed = load_recipe(REPO / path)
        assert isinstance(parsed, PretrainRecipe)
        again = load_recipe(parsed.to_dict())  # recipe.yaml reads back as the same recipe
        assert again.to_dict() == parsed.to_dict()


def test_trains_reports_perplexity_and_exports_a_plain_masked_lm(recipe, tiny_model_dir):
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    result = hf_transfer.train(recipe)
    m = result.metrics
    assert m["train_steps"] == 4 and math.isfinite(m["train_loss"])
    assert m["train_texts"] == 36 and m["eval_texts"] == 12  # 25% of 48 held out
    assert m["head_from_checkpoint"] is False  # the tiny BERT is a bare encoder, like a sentence-transformers export
    assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]), rel=1e-9)
    assert m["base_perplexity"] == pytest.approx(math.exp(m["base_eval_loss"]), rel=1e-9)
    assert m["perplexity"] < m["base_perplexity"]  # lr 1e-3 on 36 texts of 25 words: the head learns them
    out = result.output_dir
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] == pytest.approx(m["eval_loss"])
    assert "fill-mask" in (out / "README.md").read_text()

    # The reported loss is the mean over every masked token, scored independently on the exported model.
    mlm, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    assert m["eval_loss"] == pytest.approx(_reference_eval_loss(mlm, result.trainer.eval_dataset), rel=1e-5)
    assert AutoTokenizer.from_pretrained(out).mask_token == "[MASK]"

    # As the base of a task recipe: only the new classifier is missing; the pooler is the original checkpoint's.
    seq, info = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}
    original = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    torch.testing.assert_close(seq.bert.pooler.dense.weight, original.bert.pooler.dense.weight, rtol=0, atol=0)
    assert not torch.equal(seq.bert.encoder.layer[0].attention.self.query.weight,
                           original.bert.encoder.layer[0].attention.self.query.weight)  # the encoder trained
    _, info = AutoModelForTokenClassification.from_pretrained(out, num_labels=3, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}


def test_a_checkpoint_with_its_own_head_keeps_it(recipe, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(recipe["model_name_or_path"])
    torch.manual_seed(1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(config).save_pretrained(tmp_path / "with-head")
    tokenizer.save_pretrained(tmp_path / "with-head")
    result = hf_transfer.train({**recipe, "model_name_or_path": str(tmp_path / "with-head"), "max_steps": 1,
                                "learning_rate": 0.0, "eval_fraction": 0.0})
    assert result.metrics["head_from_checkpoint"] is True
    assert "perplexity" not in result.metrics  # no evaluation data, no perplexity
    key = "cls.predictions.transform.dense.weight"
    torch.testing.assert_close(_tensor(result.output_dir, key), _tensor(tmp_path / "with-head", key), rtol=0, atol=0)


def test_lora_is_merged_at_export(recipe, tiny_model_dir):
    from transformers import AutoModelForMaskedLM

    result = hf_transfer.train({**recipe, "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
                                "eval_before_training": False})
    out = result.output_dir
    keys = _keys(out)
    assert not any("lora" in k or "base_model" in k or "modules_to_save" in k for k in keys)
    assert not (out / "adapter_config.json").exists()
    mlm, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    # The adapter changed the query weights (merged), not the keys it does not target; the fresh head trained.
    query, key = "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key.weight"
    original = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).state_dict()
    assert not torch.equal(_tensor(out, query), original[query])
    torch.testing.assert_close(_tensor(out, key), original[key], rtol=0, atol=0)
    assert not torch.equal(_tensor(out, "cls.predictions.transform.dense.weight"),
                           original["cls.predictions.transform.dense.weight"])
    assert math.isfinite(result.metrics["perplexity"])


def test_resume_continues_from_the_saved_step(recipe, tmp_path):
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        """The weights training starts from, and the optimizer steps taken."""

        def __init__(self):
            self.start, self.steps = None, 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.start = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

    full = hf_transfer.train({**recipe, "save_strategy": "steps", "save_steps": 2, "eval_fraction": 0.0})
    checkpoint = full.output_dir / "checkpoint-2"
    assert checkpoint.is_dir() and (full.output_dir / "checkpoint-4").is_dir()
    watch = Watch()
    resumed = hf_transfer.train({**recipe, "eval_fraction": 0.0, "output_dir": str(tmp_path / "resumed"),
                                 "resume_from_checkpoint": str(checkpoint)}, callbacks=[watch])
    assert resumed.trainer.state.global_step == 4 and resumed.metrics["train_steps"] == 4
    assert watch.steps == 2  # steps 3 and 4 only
    for key in _keys(checkpoint):  # training went on from the checkpoint's weights
        torch.testing.assert_close(watch.start[key], _tensor(checkpoint, key), rtol=0, atol=0)
    # ... not from the base model's: the checkpoint's encoder had trained for two steps already
    name = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(_tensor(checkpoint, name), load_base_weight(recipe["model_name_or_path"], name))


def load_base_weight(folder: str, name: str) -> torch.Tensor:
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(folder).state_dict()[name]


def test_the_loss_on_masked_positions_equals_the_models_own(tiny_model_dir, tmp_path):
    """The trainer runs the head on the masked positions only; the loss is the model's own (every position)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, TrainingArguments

    from hf_transfer.masking import Masking
    from hf_transfer.pretrain import MaskedLMTrainer, PretrainCollator, mask_once, tokenize_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    masking = Masking(mlm_probability=0.3, mask_replace_prob=0.8, random_replace_prob=0.1)
    table = mask_once(tokenize_texts(_lines(6), tokenizer, max_length=32), tokenizer, masking, seed=0)
    collator = PretrainCollator(tokenizer, masking)
    batch = collator([table[i] for i in range(len(table))])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = MaskedLMTrainer(model=model, args=args, data_collator=collator)
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch))
        summed, count = trainer.masked_loss_sum(trainer.model, dict(batch))
        reference = model(**batch).loss  # the head on every position, BERT's own mean cross-entropy
    assert int(count) == int((batch["labels"] != -100).sum()) > 0
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    assert float(summed) == pytest.approx(float(reference) * int(count), rel=1e-5)


@pytest.mark.parametrize(("change", "field"), [
    ({"train_data": []}, "train_data"),
    ({"mlm_probability": 0}, "mlm_probability"),
    ({"mlm_probability": 1.5}, "mlm_probability"),
    ({"eval_fraction": 1.0}, "eval_fraction"),
    ({"eval_data": ["x.txt"]}, "eval_fraction"),  # beside eval_fraction 0.25
    ({"data_format": "conl"}, "data_format"),
    ({"mask_replace_prob": 0.95}, "random_replace_prob"),
    ({"max_train_samples": 0}, "max_train_samples"),
    ({"source_data": "a.jsonl"}, "source_data"),
    ({"method": "dann"}, "method"),
    ({"num_labels": 3}, "num_labels"),
    ({"mlm_probablity": 0.2}, "mlm_probablity"),
    ({"peft": {"r": 0}}, "peft.r"),
    ({"peft": {"r": 4, "task_type": "SEQ_CLS"}}, "peft.task_type"),
    ({"learning_rate": -1.0}, "learning_rate"),
])
def test_bad_fields_are_refused_in_one_line(recipe, change, field):
    with pytest.raises(RecipeError) as caught:
        load_recipe({**recipe, **change})
    message = str(caught.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_unknown_field_names_the_nearest(recipe):
    with pytest.raises(RecipeError, match="did you mean 'mlm_probability'"):
        load_recipe({**recipe, "mlm_probablity": 0.2})


CONLL = """-DOCSTART-\tO

EU\tB-organisation
rejects\tO
German\tB-misc
call\tO

Peter\tB-person
Blackburn\tI-person
"""


def test_conll_sentences_are_joined_words(tmp_path):
    conll = tmp_path / "train.txt"
    conll.write_text(CONLL, encoding="utf-8")
    prose = tmp_path / "prose.txt"
    prose.write_text("The EU rejects the call.\nPeter Blackburn O\n", encoding="utf-8")
    assert looks_like_conll(conll) and not looks_like_conll(prose)
    options = dict(column="text", field="train_data", split="train", config=None)
    assert read_texts([str(conll)], data_format="auto", **options) == ["EU rejects German call", "Peter Blackburn"]
    assert read_texts([str(prose), str(conll)], data_format="auto", **options) == [
        "The EU rejects the call.", "Peter Blackburn O", "EU rejects German call", "Peter Blackburn"]
    # data_format: lines reads every non-blank line as it is, conll forces the CoNLL reader.
    assert read_texts([str(conll)], data_format="lines", **options)[:2] == ["-DOCSTART-\tO", "EU\tB-organisation"]
    renamed = tmp_path / "words.conll"
    renamed.write_text(CONLL, encoding="utf-8")
    assert read_texts([str(renamed)], data_format="auto", **options) == ["EU rejects German call", "Peter Blackburn"]


def test_tables_are_read_by_text_column(tmp_path):
    rows = [{"review": "great kettle", "label": 1}, {"review": "  ", "label": 0}, {"review": "dull knife", "label": 0}]
    table = tmp_path / "reviews.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    words = tmp_path / "words.jsonl"
    words.write_text(json.dumps({"tokens": ["EU", "rejects", "it"]}) + "\n", encoding="utf-8")
    options = dict(data_format="auto", field="train_data", split="train", config=None)
    assert read_texts([str(table)], column="review", **options) == ["great kettle", "dull knife"]
    assert read_texts([str(words)], column="tokens", **options) == ["EU rejects it"]
    with pytest.raises(hf_transfer.DataError, match="text_column: .* no column 'text'"):
        read_texts([str(table)], column="text", **options)


def test_held_out_texts_are_a_seeded_disjoint_share():
    texts = [f"text {i}" for i in range(20)]
    train, held = split_held_out(texts, 0.2, seed=3)
    assert len(held) == 4 and sorted(train + held, key=texts.index) == texts
    assert split_held_out(texts, 0.2, seed=3) == (train, held)
    assert split_held_out(texts, 0.2, seed=4)[1] != held


def test_the_cli_trains_a_pretrain_recipe(recipe, tmp_path, capsys):
    import yaml

    from hf_transfer.cli import main

    path = tmp_path / "dapt.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if k != "max_steps"}), encoding="utf-8")
    assert main(["train", str(path), "--max_steps", "2", "--eval_before_training", "false"]) == 0
    metrics = json.loads((Path(recipe["output_dir"]) / "metrics.json").read_text())
    assert metrics["train_steps"] == 2 and "base_perplexity" not in metrics
    assert '"perplexity"' in capsys.readouterr().out


def test_two_processes_score_the_same_perplexity_as_one(recipe, tmp_path):
    """Under DDP each process scores its share of the held-out rows and the sums are added: the same loss as one
    process, every masked token counted once (learning rate 0, so both runs score the starting model)."""
    import os
    import subprocess

    import yaml

    from tests.conftest import accelerate_launch

    recipe = {**recipe, "learning_rate": 0.0, "max_steps": 1, "per_device_train_batch_size": 4}
    path = tmp_path / "dapt.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    two = tmp_path / "two"
    cmd = accelerate_launch("-m", "hf_transfer", "train", str(path), "--output_dir", str(two))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("written to") == 1  # the main process alone writes
    one = hf_transfer.train({**recipe, "output_dir": str(tmp_path / "one")}).metrics
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["eval_masked_tokens"] == one["eval_masked_tokens"]
    assert metrics["base_eval_loss"] == pytest.approx(one["base_eval_loss"], rel=1e-6)
    assert metrics["eval_loss"] == pytest.approx(metrics["base_eval_loss"], rel=1e-6)


def test_sharding_engines_are_refused_before_launch(recipe, tmp_path, capsys):
    import yaml

    from hf_transfer.cli import main

    path = tmp_path / "dapt.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    code = main(["check-launch", "--config_file", str(REPO / "recipes/accelerate/fsdp.yaml"), str(path),
                 "--assume_gpus", "2", "--num_processes", "2"])
    assert code == 2
    assert "distributed_type: FSDP is not supported for pretrain recipes" in capsys.readouterr().err


def test_a_task_recipe_starts_from_the_export(recipe, tiny_recipe, tmp_path):
    """The two-command chain: pre-train, then a text-classification recipe names the output folder as its model."""
    from transformers import TrainerCallback

    class Start(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    dapt = hf_transfer.train({**recipe, "max_steps": 2, "eval_fraction": 0.0})
    start = Start()
    task = hf_transfer.train({**tiny_recipe, "model_name_or_path": str(dapt.output_dir), "max_steps": 2,
                              "output_dir": str(tmp_path / "task")}, callbacks=[start])
    assert math.isfinite(task.metrics["target_accuracy"])
    for key in ("bert.encoder.layer.0.attention.self.query.weight", "bert.pooler.dense.weight"):
        torch.testing.assert_close(start.weights[key], _tensor(dapt.output_dir, key), rtol=0, atol=0)
