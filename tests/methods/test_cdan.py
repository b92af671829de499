"""CDAN: multilinear maps, entropy conditioning and the loss against the reference formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_transfer.methods._layers import dann_lambda
from hf_transfer.methods.cdan import (
    CDAN,
    CDANConfig,
    MultilinearMap,
    RandomizedMultilinearMap,
    entropy_weights,
)


def _method(feature_dim=5, num_labels=3, **kw):
    torch.manual_seed(0)
    kw.setdefault("hidden_size", 16)
    kw.setdefault("dropout", 0.0)
    return CDAN(CDANConfig(**kw), feature_dim=feature_dim, num_labels=num_labels).eval()


def test_full_map_is_the_flattened_outer_product():
    f, g = torch.randn(4, 5), torch.randn(4, 3)
    h = MultilinearMap()(f, g)
    assert h.shape == (4, 15)
    for b in range(4):
        for i in range(5):
            for j in range(3):
                assert h[b, i * 3 + j] == f[b, i] * g[b, j]


def test_full_map_is_skadas_map_up_to_the_order_of_coordinates():
    f, g = torch.randn(4, 5), torch.randn(4, 3)
    skada_map = torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).view(-1, 15)  # as in skada's CDANModule
    ours = MultilinearMap()(f, g)
    torch.testing.assert_close(ours.view(4, 5, 3).transpose(1, 2).reshape(4, 15), skada_map)


def test_randomized_map_matches_skada_random_layer_with_the_same_matrices():
    skada_adv = pytest.importorskip("skada.deep._adversarial", reason="needs skada's deep extra", exc_type=ImportError)
    ours = RandomizedMultilinearMap(5, 3, output_dim=64, seed=3)
    ref = skada_adv._RandomLayer(0, input_dims=[5, 3], output_dim=64)
    ref.random_matrix = [ours.r_features.clone(), ours.r_labels.clone()]
    f, g = torch.randn(6, 5), torch.randn(6, 3).softmax(-1)
    torch.testing.assert_close(ours(f, g), ref.forward([f, g]))


def test_randomized_map_preserves_inner_products_on_average():
    # E <T(f,g), T(f',g')> = <f,f'> <g,g'> = <f (x) g, f' (x) g'> for Gaussian projections.
    torch.manual_seed(0)
    f, g = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64).softmax(-1)
    exact = (MultilinearMap()(f, g)[0] * MultilinearMap()(f, g)[1]).sum().item()
    estimates = []
    for seed in range(20):
        rmap = RandomizedMultilinearMap(6, 4, output_dim=4096, seed=seed).double()
        h = rmap(f, g)
        estimates.append((h[0] * h[1]).sum().item())
    mean = sum(estimates) / len(estimates)
    spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1))
    assert abs(exact) > 0.5
    assert abs(mean - exact) < 3 * spread / math.sqrt(len(estimates))
    assert spread < 0.2 * abs(exact)  # a single 4096-dim projection is already a usable stand-in


def test_map_choice_and_discriminator_input_size():
    auto_full = _method(feature_dim=8, num_labels=4)
    assert isinstance(auto_full.map, MultilinearMap)
    assert auto_full.discriminator.net[0].in_features == 32
    auto_random = _method(feature_dim=768, num_labels=8)  # 6144 > 4096
    assert isinstance(auto_random.map, RandomizedMultilinearMap)
    assert auto_random.discriminator.net[0].in_features == 1024
    forced = _method(feature_dim=8, num_labels=4, multilinear_map="randomized", randomized_dim=50)
    assert forced.discriminator.net[0].in_features == 50
    assert isinstance(_method(feature_dim=768, num_labels=8, multilinear_map="full").map, MultilinearMap)


def test_randomized_projections_are_checkpointed():
    a = _method(multilinear_map="randomized", randomized_dim=32, random_seed=1)
    b = _method(multilinear_map="randomized", randomized_dim=32, random_seed=2)
    assert not torch.equal(a.map.r_features, b.map.r_features)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.map.r_features, b.map.r_features) and torch.equal(a.map.r_labels, b.map.r_labels)


def test_entropy_weights_by_hand():
    uniform = torch.full((1, 4), 0.25)
    one_hot = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert entropy_weights(uniform).item() == pytest.approx(1.25)  # 1 + exp(-log 4)
    assert entropy_weights(one_hot).item() == pytest.approx(2.0)
    assert entropy_weights(half).item() == pytest.approx(1.5)


def _reference_loss(method, batch, ns, entropy_conditioning):
    """CDAN(+E) as in the authors' code: per-domain normalised weights, sum(w * bce) / sum(w)."""
    with torch.no_grad():
        probs = F.softmax(batch.logits, dim=1)
        op = torch.bmm(batch.features.unsqueeze(2), probs.unsqueeze(1)).flatten(1)
        ad_out = torch.sigmoid(method.discriminator(op))
    dc_target = batch.domain.float()
    bce = F.binary_cross_entropy(ad_out, dc_target, reduction="none")
    if not entropy_conditioning:
        return 0.5 * (bce[:ns].mean() + bce[ns:].mean())
    entropy = -(probs * torch.log(probs)).sum(1)
    w = 1.0 + torch.exp(-entropy)
    source_w = torch.where(batch.domain == 0, w, torch.zeros_like(w))
    target_w = torch.where(batch.domain == 1, w, torch.zeros_like(w))
    weight = source_w / source_w.sum() + target_w / target_w.sum()
    return (weight * bce).sum() / weight.sum()


@pytest.mark.parametrize("entropy_conditioning", [True, False])
@pytest.mark.parametrize("ns,nt", [(4, 4), (3, 6)])
def test_loss_matches_reference_formula(make_batch, entropy_conditioning, ns, nt):
    method = _method(entropy_conditioning=entropy_conditioning)
    batch = make_batch(ns, nt)
    out = method(batch)
    ref = _reference_loss(method, batch, ns, entropy_conditioning)
    torch.testing.assert_close(out.loss.detach(), ref)
    assert set(out.logs) == {"lambda", "domain_loss", "domain_accuracy"}


def test_gradient_reaches_features_reversed_and_not_the_predictions(make_batch):
    method = _method(entropy_conditioning=True)
    batch = make_batch(4, 4, progress=0.2)
    method(batch).loss.backward()
    assert batch.logits.grad is None  # the predictions enter the map detached
    reversed_grad = batch.features.grad.clone()

    features = batch.features.detach().clone().requires_grad_(True)
    probs = batch.logits.detach().softmax(-1)
    z = method.discriminator(MultilinearMap()(features, probs))
    w = entropy_weights(probs)
    per_row = F.binary_cross_entropy_with_logits(z, batch.domain.float(), reduction="none")
    plain = 0.5 * ((w[:4] * per_row[:4]).sum() / w[:4].sum() + (w[4:] * per_row[4:]).sum() / w[4:].sum())
    plain.backward()
    torch.testing.assert_close(reversed_grad, -dann_lambda(0.2) * features.grad)


@pytest.mark.parametrize("ns,nt", [(0, 4), (4, 0)])
def test_one_sided_batch_gives_attached_zero(make_batch, ns, nt):
    method = _method()
    out = method(make_batch(ns, nt))
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    out.loss.backward()
    assert all(p.grad is not None for p in method.discriminator.parameters())
