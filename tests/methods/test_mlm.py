"""``method: mlm``: the masking (statistics on a fixed seed), the tied head, the loss against transformers'
BertForMaskedLM, and train(): logged, decreasing, composed with DANN and LoRA, dropped at export."""

import json

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    TrainerCallback,
)

import hf_transfer
from hf_transfer.data import TransferCollator
from hf_transfer.errors import RecipeError
from hf_transfer.methods import StepBatch
from hf_transfer.methods.mlm import (
    LABELS_KEY,
    MLM,
    POSITIONS_KEY,
    MaskedLMCollator,
    MLMConfig,
    TiedOutput,
    build_mlm_head,
)
from hf_transfer.profiling import HostReads
from tests.conftest import RESOURCES, read_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def paired_rows(tokenizer, n: int, max_length: int = 128) -> list[dict]:
    books = [r["text"] for r in read_jsonl(RESOURCES / "amazon_books_demo.jsonl")[:n]]
    kitchen = [r["text"] for r in read_jsonl(RESOURCES / "amazon_kitchen_demo.jsonl")[:n]]
    src = tokenizer(books, truncation=True, max_length=max_length)
    tgt = tokenizer(kitchen, truncation=True, max_length=max_length)
    rows = []
    for i in range(n):
        row = {k: src[k][i] for k in src}
        row.update({f"target_{k}": tgt[k][i] for k in tgt})
        row["labels"] = i % 2
        rows.append(row)
    return rows


def masked_batch(tokenizer, rows, **fields):
    collator = MaskedLMCollator(TransferCollator(tokenizer), tokenizer, MLMConfig(**fields), seed=7)
    return collator(rows), TransferCollator(tokenizer)(rows)


def test_masking_statistics_on_a_fixed_seed(tokenizer):
    rows = paired_rows(tokenizer, 64)
    batch, plain = masked_batch(tokenizer, rows)
    n, length = plain["input_ids"].shape
    assert batch["input_ids"].shape == (n + 64, length)  # one masked copy per target row, appended
    assert torch.equal(batch["input_ids"][:n], plain["input_ids"]) and torch.equal(batch["labels"], plain["labels"])
    original = plain["input_ids"][64:]  # the target rows
    masked = batch["input_ids"][n:]
    torch.testing.assert_close(batch["attention_mask"][n:], plain["attention_mask"][64:])

    positions, labels = batch[POSITIONS_KEY], batch[LABELS_KEY]
    rows_of, cols = positions // length, positions % length
    assert bool((rows_of >= n).all())
    assert torch.equal(labels, original[rows_of - n, cols])  # the labels are the original tokens
    special = torch.tensor([tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
                            for r in original.tolist()]).bool()
    assert not special[rows_of - n, cols].any()  # [CLS], [SEP], [PAD] never chosen
    chosen = torch.zeros_like(original, dtype=torch.bool)
    chosen[rows_of - n, cols] = True
    assert torch.equal(masked[~chosen], original[~chosen])  # only chosen tokens change

    candidates = int((~special).sum())
    k = len(labels)
    assert abs(k / candidates - 0.15) < 0.02, (k, candidates)  # ~6,000 candidates: the s.d. is 0.005
    now = masked[rows_of - n, cols]
    as_mask = float((now == tokenizer.mask_token_id).float().mean())
    kept = float((now == labels).float().mean())
    assert abs(as_mask - 0.8) < 0.05 and abs(kept - 0.1) < 0.04 and abs(1 - as_mask - kept - 0.1) < 0.04

    again, _ = masked_batch(tokenizer, rows)
    assert torch.equal(again["input_ids"], batch["input_ids"])  # seeded
    other = MaskedLMCollator(TransferCollator(tokenizer), tokenizer, MLMConfig(), seed=8)(rows)
    assert not torch.equal(other["input_ids"], batch["input_ids"])

    with_source, _ = masked_batch(tokenizer, rows, include_source=True)
    assert with_source["input_ids"].shape[0] == n + n
    evaluation = [{k: v for k, v in r.items() if not k.startswith("target_")} for r in rows[:4]]
    assert set(masked_batch(tokenizer, evaluation)[0]) == set(TransferCollator(tokenizer)(evaluation))


@pytest.fixture(scope="module")
def masked_lm_dir(tmp_path_factory, tokenizer):
    """A tiny BertForMaskedLM without dropout whose MLM head (random, non-trivial) is in the checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
        model.cls.predictions.transform.dense.bias.normal_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_head_is_tied_and_loaded_from_the_checkpoint(masked_lm_dir, tiny_model_dir):
    classifier = AutoModelForSequenceClassification.from_pretrained(masked_lm_dir, num_labels=2)
    head, missing = build_mlm_head(classifier)
    assert missing == []
    reference = BertForMaskedLM.from_pretrained(masked_lm_dir)
    transform = reference.cls.predictions.transform
    torch.testing.assert_close(head.predictions.transform.dense.weight, transform.dense.weight)
    torch.testing.assert_close(head.predictions.bias, reference.cls.predictions.bias)
    assert isinstance(head.predictions.decoder, TiedOutput)
    assert head.predictions.decoder._embeddings.value is classifier.get_input_embeddings()
    assert all(p.shape[0] != classifier.config.vocab_size or p.ndim == 1 for p in head.parameters())  # no embedding

    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    _, missing = build_mlm_head(plain)  # saved as a BertModel: no MLM head in the checkpoint
    assert "cls.predictions.transform.dense.weight" in missing


def test_loss_equals_transformers_masked_lm_loss(masked_lm_dir, tokenizer):
    classifier = AutoModelForSequenceClassification.from_pretrained(masked_lm_dir, num_labels=2).train()
    head, _ = build_mlm_head(classifier)
    method = MLM(MLMConfig(), feature_dim=32, num_labels=2)
    method.bind(classifier, head)
    batch, plain = masked_batch(tokenizer, paired_rows(tokenizer, 6, max_length=48))
    extras = {k: batch.pop(k) for k in MLM.batch_keys}
    n = batch.pop("labels").shape[0]
    domain = batch.pop("domain")
    logits = classifier(**batch).logits[:n]
    step = StepBatch(logits=logits, features=logits, labels=plain["labels"], domain=domain, extras=extras)
    reads = HostReads()
    with reads:
        out = method(step)
        out.loss.backward()
    assert dict(reads.found) == {}

    length = batch["input_ids"].shape[1]
    labels = torch.full((batch["input_ids"].shape[0] - n, length), -100)
    positions = extras[POSITIONS_KEY] - n * length
    labels.view(-1)[positions] = extras[LABELS_KEY]
    reference = BertForMaskedLM.from_pretrained(masked_lm_dir).train()
    expected = reference(input_ids=batch["input_ids"][n:], attention_mask=batch["attention_mask"][n:],
                         token_type_ids=batch["token_type_ids"][n:], labels=labels).loss
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    assert classifier.get_input_embeddings().weight.grad is not None  # the tied output layer trains the embeddings


def test_architecture_without_one_head_module_is_refused():
    config = DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=2)
    with pytest.raises(RecipeError, match="no single masked-LM head module"):
        build_mlm_head(DistilBertForSequenceClassification(config))


@pytest.mark.parametrize("fields,message", [({"mlm_probability": 0.0}, r"mlm\.mlm_probability: must be in \(0, 1\]"),
                                            ({"mlm_probability": 1.5}, r"mlm\.mlm_probability: must be in \(0, 1\]"),
                                            ({"mask_replace_prob": -0.1}, r"mlm\.mask_replace_prob: must be in \["),
                                            ({"mask_replace_prob": 0.9, "random_replace_prob": 0.2},
                                             "mlm.random_replace_prob")])
def test_bad_fields_are_recipe_errors(fields, message):
    with pytest.raises(RecipeError, match=message):
        MLMConfig(**fields)


def test_train_with_dann_learns_the_target_language_and_exports_a_plain_classifier(tiny_recipe):
    tiny_recipe.update(method=["mlm", "dann"], dann={"hidden_size": 8}, max_steps=12, logging_steps=1,
                       learning_rate=5e-3, save_strategy="steps", save_steps=12)
    result = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"])
    history = result.trainer.state.log_history
    losses = [entry["mlm/loss"] for entry in history if "mlm/loss" in entry]
    assert len(losses) == 12 and all("dann/domain_loss" in e for e in history if "mlm/loss" in e)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses  # the head and encoder learn the texts

    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["mlm/head_from_checkpoint"] is False  # the tiny model is saved without an MLM head
    state = result.trainer.method_stack.methods["mlm"].state_dict()
    assert any(k.startswith("head.predictions.transform.") for k in state)
    assert all(v.shape[0] != result.model.config.vocab_size or v.ndim == 1 for v in state.values())
    from safetensors.torch import load_file

    saved = load_file(result.output_dir / "checkpoint-12" / "transfer_methods.safetensors")
    assert {k for k in saved if "mlm" in k} == {f"methods.mlm.{k}" for k in state}  # the head is resumable

    exported = AutoModelForSequenceClassification.from_pretrained(result.output_dir).eval()
    assert not [k for k in exported.state_dict() if "cls." in k or "predictions" in k or "hf_transfer" in k]
    inputs = result.tokenizer(["works well, heats fast"], return_tensors="pt")
    trained = result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**inputs).logits, trained(**{k: v.to(trained.device)
                                                                         for k, v in inputs.items()}).logits)

    class HeadAtFirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not hasattr(self, "state"):
                self.state = {k: v.detach().clone() for k, v in self.trainer.method_stack.state_dict().items()}

    tiny_recipe.update(max_steps=14, resume_from_checkpoint="latest")
    watch = HeadAtFirstStep()
    original_init = hf_transfer.run.TransferTrainer.__init__

    def remember_trainer(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        watch.trainer = self

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_transfer.run.TransferTrainer, "__init__", remember_trainer)
        resumed = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"], callbacks=[watch])
    assert resumed.trainer.state.global_step == 14
    for key, value in watch.state.items():  # the resumed run starts from the saved head, not a fresh one
        torch.testing.assert_close(value.cpu(), saved[key])


def test_train_with_lora_keeps_the_tied_embeddings_frozen(tiny_recipe, tiny_model_dir):
    tiny_recipe.update(method=["mlm"], peft={"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]},
                       merge_adapter=True)
    result = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"])
    assert any("mlm/loss" in e for e in result.trainer.state.log_history)
    embeddings = result.model.get_input_embeddings().weight
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert not embeddings.requires_grad
    assert torch.equal(embeddings.detach().cpu(), pretrained.get_input_embeddings().weight)
    head = result.trainer.method_stack.methods["mlm"].head
    assert all(p.requires_grad for p in head.parameters())
    assert (result.output_dir / "adapter_config.json").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(result.output_dir / "merged")  # a copy of the model
    assert set(merged.state_dict()) == set(pretrained.state_dict())  # (with the MLM hook on it) merged and saved


@pytest.mark.slow
def test_minilm_mlm_head_starts_fresh_and_the_export_is_a_plain_classifier(review_files, tmp_path):
    """The packaged all-MiniLM-L6-v2 is a sentence-transformers export without an MLM head: the head's transform
    starts from random weights, on the pretrained (tied) embeddings."""
    result = hf_transfer.train({
        "model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "source_data": review_files["source"],
        "target_data": review_files["target"], "method": ["mlm"], "max_length": 32, "max_steps": 3,
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 64, "max_eval_samples": 64,
        "save_strategy": "no", "logging_steps": 1, "use_cpu": True, "disable_tqdm": True,
        "output_dir": str(tmp_path / "out"),
    }, class_names=["negative", "positive"])
    assert result.metrics["mlm/head_from_checkpoint"] is False
    losses = [e["mlm/loss"] for e in result.trainer.state.log_history if "mlm/loss" in e]
    assert len(losses) == 3 and all(0 < v < 15 for v in losses)
    exported = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert type(exported).__name__ == "BertForSequenceClassification"
    assert not [k for k in exported.state_dict() if k.startswith("cls.")]
