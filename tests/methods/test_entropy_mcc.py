"""Entropy minimisation and minimum class confusion: hand values, closed forms and skada's mcc_loss."""

import math

import pytest
import torch

from hf_transfer.methods import StepBatch
from hf_transfer.methods.entropy import Entropy, EntropyConfig, prediction_entropy
from hf_transfer.methods.mcc import MCC, MCCConfig, mcc_loss


def _batch(source_logits, target_logits):
    logits = torch.cat([source_logits, target_logits]).requires_grad_(True)
    n, ns = len(logits), len(source_logits)
    domain = torch.cat([torch.zeros(ns, dtype=torch.long), torch.ones(n - ns, dtype=torch.long)])
    return StepBatch(logits, torch.zeros(n, 2, requires_grad=True), torch.full((n,), -100), domain)


def test_entropy_hand_values_on_target_rows_only():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    uniform = torch.zeros(1, 3)
    # Source rows are confident: if they were counted the mean would drop.
    batch = _batch(torch.tensor([[50.0, 0.0, 0.0]] * 3), torch.cat([p.log(), uniform]))
    out = Entropy(EntropyConfig(), feature_dim=2, num_labels=3)(batch)
    expected = (1.5 * math.log(2) + math.log(3)) / 2  # H(.5,.25,.25) = 1.5 ln 2; H(uniform) = ln 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert prediction_entropy(torch.tensor([[1000.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-12)


def test_entropy_gradient_sharpens_predictions():
    batch = _batch(torch.zeros(0, 3), torch.tensor([[1.0, 0.5, 0.0]]))
    Entropy(EntropyConfig(), feature_dim=2, num_labels=3)(batch).loss.backward()
    grad = batch.logits.grad[0]
    assert grad[0] < 0 < grad[2]  # descending raises the top logit and lowers the last one


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_matches_skada(temperature):
    skada_losses = pytest.importorskip("skada.deep.losses", reason="needs skada's deep extra", exc_type=ImportError)
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(12, 5, generator=gen)
    ours = mcc_loss(logits, temperature)
    ref = skada_losses.mcc_loss(logits, T=temperature)
    assert ref.item() > 0.05
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_mcc_closed_forms():
    # No confusion: every row predicts one class with certainty, two classes never share a row.
    confident = torch.tensor([[40.0, 0.0, 0.0], [0.0, 40.0, 0.0], [0.0, 0.0, 40.0], [40.0, 0.0, 0.0]])
    assert mcc_loss(confident, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # Uniform predictions: every normalised row of C is 1/C, so the off-diagonal mass per class is (C-1)/C.
    assert mcc_loss(torch.zeros(6, 4), 2.5).item() == pytest.approx(3 / 4, rel=1e-6)
    # Rows split evenly between classes 0 and 1: C ~ [[a, a, e], [a, a, e], [e, e, e^2]]. Normalised rows 0 and 1
    # are (1/2, 1/2, ~0): 1/2 off-diagonal each; row 2 is (e, e, e^2)/(2e + e^2) ~ (1/2, 1/2, 0): all off-diagonal.
    split = torch.tensor([[0.0, 0.0, -50.0], [0.0, 0.0, -50.0]])
    assert mcc_loss(split, 1.0).item() == pytest.approx((0.5 + 0.5 + 1.0) / 3, abs=1e-4)


def test_mcc_method_uses_target_rows_and_temperature():
    gen = torch.Generator().manual_seed(1)
    source, target = torch.randn(4, 3, generator=gen), torch.randn(5, 3, generator=gen)
    out = MCC(MCCConfig(temperature=2.0), feature_dim=2, num_labels=3)(_batch(source, target))
    assert out.loss.item() == pytest.approx(mcc_loss(target, 2.0).item(), rel=1e-6)
    assert out.loss.item() != pytest.approx(mcc_loss(target, 1.0).item(), rel=1e-3)


@pytest.mark.parametrize("cls", [Entropy, MCC])
def test_no_target_rows_gives_attached_zero_and_one_row_is_finite(cls):
    config = cls.config_class()
    method = cls(config, feature_dim=2, num_labels=3)
    out = method(_batch(torch.randn(4, 3), torch.zeros(0, 3)))
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    batch = _batch(torch.randn(4, 3), torch.randn(1, 3))
    out = method(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert torch.isfinite(batch.logits.grad).all()
