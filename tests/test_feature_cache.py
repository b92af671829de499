"""One embedding of each row per model (:mod:`hf_transfer.feature_cache`): a second pass over rows the same model
already embedded runs no forward pass and returns the same features; changed weights embed again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_transfer import feature_cache
from hf_transfer.data import TransferCollator, tokenize
from hf_transfer.embedding import embed

TEXTS = ["great knife", "the blender broke after a week", "fine", "would buy again, works as described", "meh"]


@pytest.fixture
def setup(tiny_model_dir):
    feature_cache.clear()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    table = tokenize(Dataset.from_dict({"text": TEXTS}), tokenizer, text_column="text", text_pair_column=None,
                     max_length=32, keep=(), desc="Tokenizing")
    rows = []

    def count(module, args, kwargs):  # rows through the backbone (input_ids by keyword or first positional)
        rows.append(len(kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]))

    model.bert.register_forward_pre_hook(count, with_kwargs=True)
    yield model, table, TransferCollator(tokenizer), rows
    feature_cache.clear()


def _embed(model, table, collator, kind="mean"):
    return embed(model, table, collator, kind=kind, batch_size=2, device="cpu", desc="test", disable_progress=True)


@pytest.mark.parametrize("kind", ["mean", "head_input"])
def test_a_second_pass_embeds_nothing(setup, kind, monkeypatch):
    model, table, collator, rows = setup
    first = _embed(model, table, collator, kind)
    assert sum(rows) == len(TEXTS)
    again = _embed(model, table, collator, kind)
    assert sum(rows) == len(TEXTS)  # no row ran through the model again
    np.testing.assert_array_equal(again, first)
    # A sample of the same rows (the t-SNE's), in another order and another batching: from the cache too.
    sample = table.select([4, 1, 3])
    np.testing.assert_array_equal(_embed(model, sample, collator, kind), first[[4, 1, 3]])
    assert sum(rows) == len(TEXTS)
    # Against the features computed with the cache off (another batching: equal to round-off).
    monkeypatch.setenv(feature_cache.ENABLE_ENV, "0")
    np.testing.assert_allclose(_embed(model, table, collator, kind), first, rtol=1e-5, atol=1e-6)
    assert sum(rows) == 2 * len(TEXTS)


def test_only_new_rows_are_embedded(setup):
    model, table, collator, rows = setup
    part = _embed(model, table.select([0, 1]), collator)
    whole = _embed(model, table, collator)
    assert sum(rows) == len(TEXTS)  # 2, then the 3 not seen
    np.testing.assert_array_equal(whole[:2], part)


def test_changed_weights_embed_again(setup):
    model, table, collator, rows = setup
    before = _embed(model, table, collator)
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.add_(0.5)  # what an optimizer step does: in place
    after = _embed(model, table, collator)
    assert sum(rows) == 2 * len(TEXTS)
    assert not np.allclose(after, before)
    # Each model has its own entry: another copy of the pretrained weights embeds for itself.
    other = AutoModelForSequenceClassification.from_pretrained(model.name_or_path, num_labels=2)
    np.testing.assert_allclose(_embed(other, table, collator), before, rtol=1e-5, atol=1e-6)


def test_a_fused_optimizer_step_embeds_again(setup):
    """Fused AdamW (transformers' default optimizer) writes parameters without bumping their version counters: the
    checksum still sees the step."""
    model, table, collator, rows = setup
    before = _embed(model, table, collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    model.train()
    model(**collator([dict(r) for r in table.select_columns(["input_ids", "attention_mask"])]),
          labels=torch.zeros(len(TEXTS), dtype=torch.long)).loss.backward()
    optimizer.step()
    after = _embed(model, table, collator)
    assert sum(rows) == 3 * len(TEXTS)  # the training forward, then the whole table again
    assert not np.allclose(after, before)
