"""FeatureTap pools a sequence of features at the token the model classifies.

The reference is the model's own output: the head applied to the tapped features must give the model's logits. On a
decoder-only classifier transformers keeps the logits of each row's last non-padding token; the first token (what
the tap used to keep for every architecture) sees only itself under causal attention, so it is one constant vector.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForSequenceClassification, GPT2Config, LlamaConfig

from hf_transfer import backbones
from hf_transfer.backbones import FeatureTap, classified_token, find_feature_module, load_classifier

PAD = 0
VOCAB = 64
# Right-padded rows of lengths 5, 3, 6 and 2. Every row starts with the same token (as a BOS would), so the first
# token's feature is the same in every row under causal attention.
LENGTHS = (5, 3, 6, 2)


def _padded_batch(lengths=LENGTHS, *, left: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens = torch.cat([torch.tensor([1]), torch.randint(2, VOCAB, (n - 1,), generator=gen)])
        span = slice(width - n, width) if left else slice(0, n)
        ids[row, span], mask[row, span] = tokens, 1
    return ids, mask


def _gpt2():
    return GPT2Config(vocab_size=VOCAB, n_positions=32, n_layer=2, n_embd=32, n_head=2, pad_token_id=PAD,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=3)


def _llama():
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32, pad_token_id=PAD,
                       num_labels=3)


def _decoder(config_fn):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config_fn()).eval()


DECODERS = pytest.mark.parametrize("config_fn", [_gpt2, _llama], ids=["gpt2", "llama"])


@DECODERS
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_decoder_features_through_the_head_give_the_models_logits(config_fn, left):
    model = _decoder(config_fn)
    name, head = find_feature_module(model, 3)
    assert name == "score"
    tap = FeatureTap(head)  # the model comes from find_feature_module
    ids, mask = _padded_batch(left=left)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        feats = tap.pop()
        torch.testing.assert_close(head(feats), out.logits)
        # By hand: the backbone's last hidden state at each row's last real token.
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = [max(LENGTHS) - 1 if left else n - 1 for n in LENGTHS]
    torch.testing.assert_close(feats, hidden[torch.arange(len(LENGTHS)), last])
    # The old first-token feature is one constant vector (right padding: every row's first token is the same
    # real token); the fixed one differs between rows.
    if not left:
        assert (hidden[:, 0] - hidden[0, 0]).abs().max() == 0.0
    assert (feats - feats[0]).abs().max(dim=1).values[1:].min() > 1e-3
    tap.remove()


@DECODERS
def test_decoder_given_inputs_embeds_uses_the_last_position_like_transformers(config_fn):
    model = _decoder(config_fn)
    _, head = find_feature_module(model, 3)
    tap = FeatureTap(head, model=model)
    ids, mask = _padded_batch()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        out = model(inputs_embeds=embeds, attention_mask=mask)
        torch.testing.assert_close(head(tap.pop()), out.logits)


@DECODERS
def test_peft_wrapped_decoder_and_its_frozen_copy(config_fn):
    from hf_transfer.backbones import wrap_with_peft
    from hf_transfer.methods._pretrained import frozen_copy

    target = "c_attn" if config_fn is _gpt2 else "q_proj"
    model = wrap_with_peft(_decoder(config_fn), {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2,
                                                 "target_modules": [target]}).eval()
    name, head = find_feature_module(model, 3)
    assert "modules_to_save" in name
    ids, mask = _padded_batch()
    tap = FeatureTap(head)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(head(tap.pop()), out.logits)
    # A deep copy of the model (lwf's frozen reference) links its feature module to the copy, not the original.
    copy = frozen_copy(model)
    copy_head = dict(copy.named_modules())[name]
    copy_tap = FeatureTap(copy_head)
    assert copy_tap._model is copy
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(0.01)  # the copy now computes other features than the original
        out = copy(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(copy_head(copy_tap.pop()), out.logits)


def test_encoder_features_are_unchanged(tiny_model_dir):
    """BERT: the default feature is the pooler output (no sequence); a module that takes the sequence (the pooler
    itself) gives its first token, bit for bit as before."""
    model = load_classifier(tiny_model_dir, num_labels=2).eval()
    assert classified_token(model) == "first"
    _, head = find_feature_module(model, 2)
    _, pooler = find_feature_module(model, 2, "pooler")
    head_tap, pooler_tap = FeatureTap(head), FeatureTap(pooler)
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        backbone = model.bert(input_ids=ids, attention_mask=mask)
    assert torch.equal(head_tap.pop(), backbone.pooler_output)
    assert torch.equal(pooler_tap.pop(), backbone.last_hidden_state[:, 0])
    torch.testing.assert_close(out.logits, head(backbone.pooler_output))


def test_roberta_head_named_as_feature_module_gets_the_first_token():
    from transformers import RobertaConfig

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=PAD, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    _, head = find_feature_module(model, 3, "classifier")
    tap = FeatureTap(head)
    ids, mask = _padded_batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        feats = tap.pop()
        hidden = model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(feats, hidden[:, 0])
        torch.testing.assert_close(head.out_proj(torch.tanh(head.dense(feats))), out.logits)


def test_unknown_pooling_warns_once_per_model_class(caplog, monkeypatch):
    """BART reads the last end-of-sequence token: not a pooling the tap knows, so it says so (once)."""
    from transformers import BartConfig

    monkeypatch.setattr(backbones, "_WARNED_POOLING", set())
    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                        pad_token_id=PAD, bos_token_id=1, eos_token_id=VOCAB - 1, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert classified_token(model) is None
    _, layer = find_feature_module(model, 3, "model.decoder.layers.0")
    ids, mask = _padded_batch()
    ids = ids.clamp(max=VOCAB - 2)
    ids[torch.arange(len(LENGTHS)), torch.tensor(LENGTHS) - 1] = VOCAB - 1  # BART classifies its </s> token
    with caplog.at_level(logging.WARNING, logger="hf_transfer.backbones"):
        for _ in range(2):
            tap = FeatureTap(layer)
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
            assert tap.pop().shape == (len(LENGTHS), 32)
            tap.remove()
    warnings = [r for r in caplog.records if "cannot tell which token BartForSequenceClassification" in r.message]
    assert len(warnings) == 1


def test_a_tap_without_its_model_warns_and_reads_the_first_token(caplog, monkeypatch):
    monkeypatch.setattr(backbones, "_WARNED_POOLING", set())
    layer = torch.nn.Linear(4, 2)
    tap = FeatureTap(layer)
    seq = torch.randn(3, 5, 4)
    with caplog.at_level(logging.WARNING, logger="hf_transfer.backbones"):
        layer(seq)
    assert torch.equal(tap.pop(), seq[:, 0])
    assert any("without its model" in r.message for r in caplog.records)


def test_dann_trains_on_the_last_token_features_of_a_gpt2_classifier(tmp_path):
    """A few DANN steps through TransferTrainer: the discriminator sees each row's last-token feature."""
    from transformers import TrainingArguments, default_data_collator

    from hf_transfer.methods.dann import DANN, DANNConfig
    from hf_transfer.trainer import TransferTrainer

    seen = []

    class RecordingDANN(DANN):
        def forward(self, batch):
            seen.append((batch.features.detach().clone(), batch.inputs["input_ids"].clone(),
                         batch.inputs["attention_mask"].clone()))
            return super().forward(batch)

    model = _decoder(_gpt2)
    reference = AutoModelForSequenceClassification.from_config(_gpt2()).eval()
    reference.load_state_dict(model.state_dict())
    ids, mask = _padded_batch((5, 3, 6, 2, 4, 6, 3, 5), seed=1)
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": torch.tensor(i % 3),
             "domain": torch.tensor(i % 2)} for i in range(len(ids))]
    for row in rows:
        if row["domain"] == 1:
            row["labels"] = torch.tensor(-100)  # target rows carry no label
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, use_cpu=True,
                             report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-3, seed=0,
                             disable_tqdm=True, dataloader_num_workers=0)
    _, head = find_feature_module(model, 3)
    torch.manual_seed(0)
    dann = RecordingDANN(DANNConfig(hidden_size=8, dropout=0.0), feature_dim=32, num_labels=3)
    trainer = TransferTrainer(model=model, args=args, train_dataset=rows, data_collator=default_data_collator,
                              methods={"dann": dann}, feature_module=head)
    trainer.train()
    assert len(seen) == 3
    losses = [e["dann/domain_loss"] for e in trainer.state.log_history if "dann/domain_loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    # The first step ran on the untrained weights: its features are the reference backbone's last real tokens.
    feats, step_ids, step_mask = seen[0]
    with torch.no_grad():
        hidden = reference.transformer(input_ids=step_ids, attention_mask=step_mask).last_hidden_state
    last = step_mask.sum(1) - 1
    torch.testing.assert_close(feats, hidden[torch.arange(len(last)), last])
    assert (feats - feats[0]).abs().max(dim=1).values[1:].min() > 1e-3
