"""Shared layers: gradient reversal, lambda schedule, discriminator, kernels."""

import math

import pytest
import torch

from hf_transfer.methods import StepBatch
from hf_transfer.methods._layers import (
    DomainDiscriminator,
    GradientReverseLayer,
    dann_lambda,
    grad_reverse,
    mean_pairwise_squared_distance,
    multi_gaussian_kernel,
    squared_distances,
)
from hf_transfer.methods.dann import DANN, DANNConfig


@pytest.mark.parametrize("coeff", [1.0, 0.3, 2.5, 0.0])
def test_grl_is_identity_forward_and_reverses_scaled_gradient(coeff):
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = grad_reverse(x, coeff)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, -coeff * upstream)


def test_grl_layer_per_call_coefficient_overrides_the_built_one():
    layer = GradientReverseLayer(coeff=0.5)
    x = torch.ones(3, requires_grad=True)
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    x.grad = None
    layer(x, 4.0).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -4.0))


def test_grl_gradient_through_a_network_is_the_negated_plain_gradient():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 3, requires_grad=True)
    net(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    net(grad_reverse(x, 0.7)).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * plain)


def test_lambda_schedule_values():
    # 2/(1+exp(-g p)) - 1 == tanh(g p / 2): an independent form for the reference values.
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(math.tanh(2.5), abs=1e-12)
    assert dann_lambda(0.5) == pytest.approx(0.9866142981514305, abs=1e-12)
    assert dann_lambda(1.0) == pytest.approx(0.9999092042625951, abs=1e-12)
    assert dann_lambda(0.1, gamma=10.0) == pytest.approx(math.tanh(0.5), abs=1e-12)
    assert dann_lambda(0.5, lambda_max=0.1, gamma=2.0) == pytest.approx(0.1 * math.tanh(0.5), abs=1e-12)
    assert dann_lambda(1.7) == dann_lambda(1.0)  # progress is clamped to [0, 1]
    for p in (0.0, 0.5, 1.0):
        assert dann_lambda(p, schedule="fixed", lambda_max=0.3) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        dann_lambda(0.5, schedule="linear")


def test_discriminator_shape_and_depth():
    disc = DomainDiscriminator(7, hidden_size=11, num_layers=3, dropout=0.2)
    linears = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 11), (11, 11), (11, 11), (11, 1)]
    assert [m.p for m in disc.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.2]
    assert disc(torch.randn(4, 7)).shape == (4,)
    logistic = DomainDiscriminator(7, hidden_size=11, num_layers=0)
    assert [(m.in_features, m.out_features) for m in logistic.modules() if isinstance(m, torch.nn.Linear)] == [(7, 1)]


def test_kernel_and_distances_by_hand():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0]])
    sq = squared_distances(x, y)
    torch.testing.assert_close(sq, torch.tensor([[1.0], [1.0]]))
    sq_xx = squared_distances(x, x)
    torch.testing.assert_close(sq_xx, torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    k = multi_gaussian_kernel(sq_xx, 1.0, [1.0, 2.0])
    expected = torch.tensor([[2.0, math.exp(-2) + math.exp(-1)], [math.exp(-2) + math.exp(-1), 2.0]])
    torch.testing.assert_close(k, expected)
    z = torch.randn(9, 4, dtype=torch.float64)
    torch.testing.assert_close(squared_distances(z, z), torch.cdist(z, z) ** 2)


def test_mean_pairwise_squared_distance_matches_double_loop():
    z = torch.randn(7, 3, dtype=torch.float64)
    pairs = [((z[i] - z[j]) ** 2).sum() for i in range(7) for j in range(7) if i != j]
    torch.testing.assert_close(mean_pairwise_squared_distance(z), torch.stack(pairs).mean())


def test_discriminator_learns_to_separate_shifted_gaussians():
    torch.manual_seed(0)
    dim, n = 8, 128
    direction = torch.zeros(dim)
    direction[0] = 4.0  # Bayes accuracy Phi(2) ~ 0.977

    def sample():
        feats = torch.cat([torch.randn(n, dim), torch.randn(n, dim) + direction])
        domain = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
        return StepBatch(
            logits=torch.zeros(2 * n, 2), features=feats, labels=torch.full((2 * n,), -100), domain=domain
        )

    method = DANN(DANNConfig(hidden_size=32, dropout=0.0), feature_dim=dim, num_labels=2)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    method.eval()
    start = method(sample()).logs["domain_accuracy"]
    method.train()
    for _ in range(300):
        out = method(sample())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    method.eval()
    with torch.no_grad():
        held_out = method(sample())
    assert held_out.logs["domain_accuracy"] > 0.93
    assert held_out.logs["domain_accuracy"] > start + 0.2
    assert held_out.logs["domain_loss"] < 0.15
