"""The multi-task loss terms against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hf_transfer.multitask.losses import TaskDiscriminator, UncertaintyWeighting, l2_tie_penalty, orthogonality_penalty


def test_uncertainty_weighting_by_hand():
    weighting = UncertaintyWeighting(3)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.0, 0.7, -0.4]))
    loss = torch.tensor(1.3)
    # classification: L / sigma^2 + log sigma, with s = log sigma^2
    assert weighting(loss, 1).item() == pytest.approx(math.exp(-0.7) * 1.3 + 0.35, rel=1e-6)
    # regression: L / (2 sigma^2) + log sigma
    assert weighting(loss, 2, regression=True).item() == pytest.approx(0.5 * math.exp(0.4) * 1.3 - 0.2, rel=1e-6)
    assert weighting(loss, 0).item() == pytest.approx(1.3)  # s = 0: weight 1
    # d/ds [exp(-s) L + s/2] = -exp(-s) L + 1/2
    weighting(loss, 1).backward()
    assert weighting.log_vars.grad.tolist() == pytest.approx([0.0, -math.exp(-0.7) * 1.3 + 0.5, 0.0], rel=1e-6)
    weighting.grow(5)
    assert weighting.log_vars.tolist() == pytest.approx([0.0, 0.7, -0.4, 0.0, 0.0])


def test_l2_tie_penalty_by_hand_and_its_gradient():
    torch.manual_seed(0)
    modules = [nn.Linear(3, 2) for _ in range(3)]
    value = l2_tie_penalty(modules)
    # pairwise form of Duong et al.: (1/T) sum_{s<t} ||theta_s - theta_t||^2
    flat = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in modules]
    pairwise = sum(float(((flat[s] - flat[t]) ** 2).sum()) for s in range(3) for t in range(s + 1, 3)) / 3
    mean = sum(flat) / 3
    centred = sum(float(((f - mean) ** 2).sum()) for f in flat)
    assert value.item() == pytest.approx(pairwise, rel=1e-5)
    assert value.item() == pytest.approx(centred, rel=1e-5)
    value.backward()
    for m, f in zip(modules, flat):
        grad = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
        torch.testing.assert_close(grad, 2 * (f - mean))
    same = [nn.Linear(3, 2) for _ in range(2)]
    same[1].load_state_dict(same[0].state_dict())
    assert l2_tie_penalty(same).item() == 0.0


def test_orthogonality_penalty_by_hand():
    shared = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    private = torch.tensor([[0.5, 0.0, 1.0], [2.0, 1.0, 0.0], [-1.0, 1.0, 1.0]])
    expected = 0.0
    for j in range(2):
        for k in range(3):
            expected += sum(shared[i, j] * private[i, k] for i in range(3)).item() ** 2
    assert orthogonality_penalty(shared, private).item() == pytest.approx(expected)
    # features whose row patterns are orthogonal have no penalty
    a = torch.tensor([[1.0], [1.0], [0.0]])
    b = torch.tensor([[1.0], [-1.0], [5.0]])
    assert orthogonality_penalty(a, b).item() == 0.0
    with pytest.raises(ValueError, match="rows"):
        orthogonality_penalty(shared, private[:2])


def test_task_discriminator_reverses_the_gradient():
    torch.manual_seed(0)
    disc = TaskDiscriminator(4, 3, hidden_size=8)
    features = torch.randn(5, 4, requires_grad=True)
    disc.loss(features, 2).backward()
    reversed_grad = features.grad.clone()
    features.grad = None
    target = torch.full((5,), 2)
    nn.functional.cross_entropy(disc.net(features), target).backward()
    torch.testing.assert_close(reversed_grad, -features.grad)
    assert disc.net[0].weight.grad is not None  # the discriminator itself learns normally
