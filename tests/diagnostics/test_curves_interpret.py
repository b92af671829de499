"""Learning curve and power law; nearest neighbours and gradient x input against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_transfer.diagnostics.curves import PowerLaw, default_sizes, fit_power_law, learning_curve
from hf_transfer.diagnostics.interpret import nearest_source_neighbours, token_attributions, top_weighted_sources


def test_power_law_fit_recovers_known_parameters():
    law = PowerLaw(0.92, 0.6, 0.45)
    sizes = np.array([10, 20, 50, 100, 200, 500, 1000])
    fitted = fit_power_law(sizes, law(sizes))
    assert (fitted.a, fitted.b, fitted.c) == pytest.approx((0.92, 0.6, 0.45), rel=1e-4)


def test_labels_needed_by_hand():
    law = PowerLaw(0.9, 0.5, 0.5)
    # 0.9 - 0.5 / sqrt(n) = 0.85  ->  sqrt(n) = 10  ->  n = 100
    assert law.labels_needed(0.85) == pytest.approx(100.0)
    assert law(100) == pytest.approx(0.85)
    assert law.labels_needed(0.95) == float("inf")  # above the ceiling


def test_learning_curve_rises_with_labels_and_sizes_are_valid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10))
    y = (x[:, :3].sum(1) + rng.normal(size=400) > 0).astype(int)
    curve = learning_curve(x[:300], y[:300], x[300:], y[300:], sizes=[10, 40, 300], repeats=3)
    assert curve.sizes == [10, 40, 300]
    assert curve.accuracy[-1] > curve.accuracy[0]
    assert curve.accuracy[-1] > 0.8
    assert default_sizes(300) == sorted(set(default_sizes(300)))
    assert default_sizes(300)[0] == 10 and default_sizes(300)[-1] == 300
    with pytest.raises(ValueError, match="sizes"):
        learning_curve(x[:300], y[:300], x[300:], y[300:], sizes=[500])


def test_nearest_source_neighbours_match_brute_force_cosine():
    rng = np.random.default_rng(1)
    xs, xt = rng.normal(size=(50, 6)), rng.normal(size=(20, 6))
    mask = np.zeros(20, dtype=bool)
    mask[[3, 7, 11]] = True
    nb = nearest_source_neighbours(xs, xt, rows=mask, k=4)
    cos = (xt / np.linalg.norm(xt, axis=1, keepdims=True)) @ (xs / np.linalg.norm(xs, axis=1, keepdims=True)).T
    assert nb.target_index.tolist() == [3, 7, 11]
    for r, t in enumerate(nb.target_index):
        assert nb.source_index[r].tolist() == np.argsort(-cos[t])[:4].tolist()
        assert nb.similarity[r] == pytest.approx(np.sort(cos[t])[::-1][:4])


def test_top_weighted_sources():
    assert top_weighted_sources([0.5, 3.0, 1.0, 3.0], k=3) == [(1, 3.0), (3, 3.0), (2, 1.0)]


def test_gradient_times_input_equals_directional_derivative(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).double().eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "the blender broke after a week"
    attributions = token_attributions(model, tokenizer, text, label=1)
    enc = tokenizer(text, return_tensors="pt")
    assert [t for t, _ in attributions] == tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    emb = model.get_input_embeddings()(enc["input_ids"]).detach()
    rest = {k: v for k, v in enc.items() if k != "input_ids"}

    def logit(e):
        with torch.no_grad():
            return float(model(inputs_embeds=e, **rest).logits[0, 1])

    # grad . e at token i is the derivative of the logit along e_i: (f(e_i * (1 + h)) - f(e_i * (1 - h))) / 2h
    h = 1e-5
    for i in (1, 3):
        up, down = emb.clone(), emb.clone()
        up[0, i] *= 1 + h
        down[0, i] *= 1 - h
        assert attributions[i][1] == pytest.approx((logit(up) - logit(down)) / (2 * h), rel=1e-4, abs=1e-8)
