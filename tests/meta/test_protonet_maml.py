"""Prototypical-network logits/loss, the FOMAML / Reptile update rules and the hypernetwork head, against hand
computations."""

import math

import numpy as np
import pytest
import torch

from hf_transfer.meta import (
    HyperHead,
    fomaml_gradients,
    protonet_loss,
    prototype_logits,
    prototypes,
    reptile_gradients,
)
from hf_transfer.meta.maml import episode_head, head_logits, set_gradients

SUPPORT = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
SUPPORT_LABELS = torch.tensor([0, 0, 1, 1])
QUERY = torch.tensor([[1.0, 1.0], [0.0, 3.0]])


def test_prototypes_and_euclidean_logits():
    protos = prototypes(SUPPORT, SUPPORT_LABELS, 2)
    assert protos.tolist() == [[1.0, 0.0], [0.0, 3.0]]
    # q=(1,1): ||q-c0||^2 = 1, ||q-c1||^2 = 1 + 4 = 5; q=(0,3): 1 + 9 = 10, 0
    logits = prototype_logits(QUERY, protos, distance="euclidean", temperature=1.0)
    assert torch.allclose(logits, torch.tensor([[-1.0, -5.0], [-10.0, 0.0]]))
    loss, _ = protonet_loss(SUPPORT, SUPPORT_LABELS, QUERY, torch.tensor([0, 1]), n_way=2)
    expected = (math.log(1 + math.exp(-4)) + math.log(1 + math.exp(-10))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)  # float32


def test_cosine_logits():
    protos = prototypes(SUPPORT, SUPPORT_LABELS, 2)
    logits = prototype_logits(QUERY, protos, distance="cosine", temperature=0.1)
    # cos((1,1),(1,0)) = cos((1,1),(0,1)) = 1/sqrt 2; (0,3) is orthogonal to (1,0) and parallel to (0,3)
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 1.0]]) * 10
    assert torch.allclose(logits, expected, atol=1e-6)


def test_prototype_head_matches_euclidean_softmax():
    head = episode_head(SUPPORT, SUPPORT_LABELS, 2, "prototypes")
    # 2 q.c - ||c||^2 = -||q - c||^2 + ||q||^2: the same softmax as the prototype classifier
    assert torch.allclose(head_logits(QUERY, head).softmax(-1),
                          prototype_logits(QUERY, prototypes(SUPPORT, SUPPORT_LABELS, 2)).softmax(-1), atol=1e-6)
    weight, bias = episode_head(SUPPORT, SUPPORT_LABELS, 2, "zero")
    assert not weight.any() and not bias.any() and weight.requires_grad


# A linear model w in R^2 with the mean squared error: grad L(w) = 2/n X^T (X w - y).
XS, YS = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 2.0])
XQ, YQ = torch.tensor([[1.0, 1.0]]), torch.tensor([1.0])


def _mse(w, x, y):
    return ((x @ w - y) ** 2).mean()


def test_fomaml_update_by_hand():
    w = torch.zeros(2, requires_grad=True)
    grads, loss = fomaml_gradients([w], lambda: _mse(w, XS, YS), lambda: _mse(w, XQ, YQ), steps=2, lr=0.1)
    # phi1 = 0 - 0.1 * (-1, -2) = (0.1, 0.2); phi2 = phi1 - 0.1 * (-0.9, -1.8) = (0.19, 0.38)
    # grad L_q(phi2) = 2 * (0.57 - 1) * (1, 1) = (-0.86, -0.86); L_q(phi2) = 0.43^2
    assert torch.allclose(grads[0], torch.tensor([-0.86, -0.86]), atol=1e-6)
    assert loss == pytest.approx(0.43**2, rel=1e-5)
    assert w.tolist() == [0.0, 0.0]  # theta restored


def test_reptile_update_by_hand():
    w = torch.zeros(2, requires_grad=True)
    deltas, _ = reptile_gradients([w], lambda: _mse(w, XS, YS), steps=2, lr=0.1)
    assert torch.allclose(deltas[0], torch.tensor([-0.19, -0.38]), atol=1e-6)  # theta - phi2
    assert w.tolist() == [0.0, 0.0]
    set_gradients([w], deltas)
    torch.optim.SGD([w], lr=0.5).step()  # theta + eps (phi - theta)
    assert torch.allclose(w.detach(), torch.tensor([0.095, 0.19]), atol=1e-6)


def test_hypernet_starts_as_prototype_dot_product_and_is_permutation_equivariant():
    torch.manual_seed(0)
    head = HyperHead(hidden_size=2, inner_size=8)
    logits = head.logits(SUPPORT, SUPPORT_LABELS, QUERY, 2)
    assert torch.allclose(logits, QUERY @ torch.tensor([[1.0, 0.0], [0.0, 3.0]]).T)
    torch.nn.init.normal_(head.net[-1].weight)  # a trained head: swapping the labels swaps the logits
    swapped = head.logits(SUPPORT, 1 - SUPPORT_LABELS, QUERY, 2)
    assert torch.allclose(swapped, head.logits(SUPPORT, SUPPORT_LABELS, QUERY, 2).flip(-1), atol=1e-6)
    loss, _ = head.loss(SUPPORT, SUPPORT_LABELS, QUERY, torch.tensor([0, 1]), 2)
    loss.backward()
    assert head.net[0].weight.grad is not None and np.isfinite(loss.item())


def test_cls_pooling_is_refused_on_a_causal_encoder():
    """The first token of a decoder-only encoder is the same for every text: cls pooling would embed a constant."""
    from transformers import GPT2Config, GPT2Model

    from hf_transfer.errors import RecipeError
    from hf_transfer.meta import Embedder

    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 50, (3, 6))
    ids[:, 0] = 7
    first = gpt2(input_ids=ids).last_hidden_state[:, 0]
    assert torch.allclose(first, first[:1].expand_as(first))  # why: the same first token, the same state
    with pytest.raises(RecipeError, match="^pooling: cls takes the first token"):
        Embedder(gpt2, pooling="cls")
    assert Embedder(gpt2, pooling="mean")(ids).shape == (3, 32)
