"""MultiTaskModel on a tiny random BERT: save/load, exact per-task export, adapter switching, penalties, add_task."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

import hf_transfer  # noqa: F401  (registers the multi-task model with the Auto classes)
from hf_transfer.multitask import MultiTaskConfig, MultiTaskModel, l2_tie_penalty, orthogonality_penalty
from hf_transfer.multitask.modeling import SHARED_ADAPTER, _lora_layers, _masked_mean

TASKS = [
    {"name": "books", "num_labels": 2, "id2label": {0: "negative", 1: "positive"}},
    {"name": "stars", "num_labels": 3},
    {"name": "score", "problem_type": "regression"},
]
LORA = {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"], "lora_dropout": 0.0}
TEXTS = ["a fine book, well worth it", "broke after a day", "ok"]


def build(tiny_model_dir, sharing, **kwargs):
    torch.manual_seed(0)
    if sharing in ("soft_lora", "shared_private"):
        kwargs.setdefault("lora_config", LORA)
    model = MultiTaskModel.from_encoder(tiny_model_dir, tasks=TASKS, sharing=sharing, **kwargs)
    with torch.no_grad():  # LoRA B starts at 0: give every adapter its own non-zero update so switching shows
        for _, layer in _lora_layers(model):
            for part in layer.lora_B.values():
                part.weight.normal_(0, 0.5)
        if model.encoders is not None:  # per-task encoders start equal: make them differ
            for i, encoder in enumerate(model.encoders.values()):  # (a constant shift would vanish in LayerNorm)
                weight = encoder.embeddings.word_embeddings.weight
                weight.add_(0.1 * i * torch.randn_like(weight))
    return model.eval()


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


def all_logits(model, batch):
    with torch.no_grad():
        return {t["name"]: model(**batch, task=t["name"]).logits for t in TASKS}


@pytest.mark.parametrize("sharing", ["hard", "soft_lora", "soft_l2", "shared_private"])
def test_save_load_round_trip_and_exact_task_export(tiny_model_dir, batch, tmp_path, sharing):
    model = build(tiny_model_dir, sharing)
    before = all_logits(model, batch)
    assert before["books"].shape == (3, 2) and before["stars"].shape == (3, 3) and before["score"].shape == (3, 1)
    if sharing != "hard":  # each task runs with its own adapter / encoder: same head init, different features
        tokens = {k: v for k, v in batch.items()}
        with torch.no_grad():
            outs = [model._encode(t["name"], tokens).last_hidden_state for t in TASKS]
        assert not torch.allclose(outs[0], outs[1])
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hf_transfer_multitask"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MultiTaskModel) and isinstance(loaded.config, MultiTaskConfig)
    assert loaded.task_names == ["books", "stars", "score"] and loaded.config.sharing == sharing
    for name, logits in all_logits(loaded, batch).items():
        torch.testing.assert_close(logits, before[name])
    for name in ("books", "score"):
        exported = model.export_task(name)
        assert type(exported).__name__ == "BertForSequenceClassification"
        with torch.no_grad():
            torch.testing.assert_close(exported(**batch).logits, before[name], atol=1e-5, rtol=1e-4)
    assert model.export_task("books").config.id2label == {0: "negative", 1: "positive"}
    assert model.export_task("score").config.problem_type == "regression"


def test_mixed_batch_routes_rows_to_their_heads(tiny_model_dir, batch):
    for sharing in ("hard", "soft_lora"):
        model = build(tiny_model_dir, sharing)
        single = all_logits(model, batch)
        with torch.no_grad():
            mixed = model(**batch, task_ids=torch.tensor([1, 0, 2])).logits
        assert mixed.shape == (3, 3)
        torch.testing.assert_close(mixed[0], single["stars"][0])
        torch.testing.assert_close(mixed[1, :2], single["books"][1])
        torch.testing.assert_close(mixed[2, :1], single["score"][2])
        assert torch.isinf(mixed[1, 2]) and torch.isinf(mixed[2, 1:]).all()


def test_losses_in_forward(tiny_model_dir, batch):
    model = build(tiny_model_dir, "hard", loss_weighting="uncertainty").train()
    with torch.no_grad():
        model.loss_weights.log_vars.copy_(torch.tensor([0.0, 0.5, -0.3]))
    out = model(**batch, task="stars", labels=torch.tensor([0, 2, 1]))
    raw = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2, 1]))
    torch.testing.assert_close(out.task_loss, raw)
    torch.testing.assert_close(out.loss, torch.exp(torch.tensor(-0.5)) * raw + 0.25)
    out = model(**batch, task="score", labels=torch.tensor([0.5, -1.0, 2.0]))
    mse = torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(out.loss, 0.5 * torch.exp(torch.tensor(0.3)) * mse - 0.15)

    soft = build(tiny_model_dir, "soft_l2", l2_tie_weight=0.5).train()
    out = soft(**batch, task="books", labels=torch.tensor([0, 1, 1]))
    tie = l2_tie_penalty(list(soft.encoders.values()))
    assert tie.item() > 0
    torch.testing.assert_close(out.l2_tie, tie)
    torch.testing.assert_close(out.loss, out.task_loss + 0.5 * tie)
    out.loss.backward()
    assert all(e.embeddings.word_embeddings.weight.grad is not None for e in soft.encoders.values())


def test_shared_private_penalties_match_the_adapter_outputs(tiny_model_dir, batch):
    model = build(tiny_model_dir, "shared_private", orthogonality_weight=0.3, adversarial_weight=0.2).train()
    seen: dict[str, list] = {SHARED_ADAPTER: [], "stars": []}
    handles = [part.register_forward_hook(lambda m, a, o, key=key: seen[key].append(o))
               for _, layer in _lora_layers(model) for key, part in layer.lora_B.items() if key in seen]
    out = model(**batch, task="stars", labels=torch.tensor([0, 2, 1]))
    for h in handles:
        h.remove()
    mask = batch["attention_mask"]
    assert len(seen[SHARED_ADAPTER]) == len(seen["stars"]) == 4  # query and value of 2 layers
    expected = sum(orthogonality_penalty(_masked_mean(s, mask), _masked_mean(p, mask))
                   for s, p in zip(seen[SHARED_ADAPTER], seen["stars"]))
    assert expected.item() > 0
    torch.testing.assert_close(out.orthogonality, expected)
    assert out.adversarial is not None
    torch.testing.assert_close(out.loss, out.task_loss + 0.3 * expected + 0.2 * out.adversarial)
    out.loss.backward()
    assert model.discriminator.net[0].weight.grad is not None


@pytest.mark.parametrize("sharing", ["hard", "soft_lora", "soft_l2", "shared_private"])
def test_add_task_trains_only_the_new_parts(tiny_model_dir, batch, sharing):
    model = build(tiny_model_dir, sharing, loss_weighting="uncertainty")
    before = all_logits(model, batch)
    model.add_task("topic", num_labels=4)
    model.set_trainable(["topic"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("topic" in n or n.startswith("loss_weights") for n in trainable), trainable
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(2):
        model(**batch, task="topic", labels=torch.tensor([0, 3, 1])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    for name, logits in all_logits(model, batch).items():
        torch.testing.assert_close(logits, before[name])
    with torch.no_grad():
        assert model(**batch, task="topic").logits.shape == (3, 4)
    with pytest.raises(ValueError, match="already exists"):
        model.add_task("books")


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_other_backbones_export_their_own_head_class(arch, tmp_path):
    """Heads are the backbone's own ...ForSequenceClassification head (DistilBERT's pre_classifier + classifier on
    the first token; RoBERTa's classification head, whose encoder has no pooler), so exports stay exact."""
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    if arch == "distilbert":
        encoder, target = DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2,
                                                           hidden_dim=64)), ["q_lin", "v_lin"]
    else:
        encoder, target = RobertaModel(RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     max_position_embeddings=64)), ["query", "value"]
    encoder.save_pretrained(tmp_path / "encoder")
    model = MultiTaskModel.from_encoder(str(tmp_path / "encoder"), tasks=TASKS[:2], sharing="soft_lora",
                                        lora_config={"r": 2, "target_modules": target}).eval()
    with torch.no_grad():
        for _, layer in _lora_layers(model):
            for part in layer.lora_B.values():
                part.weight.normal_(0, 0.5)
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        for task in ("books", "stars"):
            exported = model.export_task(task)
            assert type(exported).__name__.lower().startswith(arch)
            torch.testing.assert_close(exported(input_ids=ids, attention_mask=mask).logits,
                                       model(input_ids=ids, attention_mask=mask, task=task).logits)
