"""Deep CORAL against skada's deepcoral_loss and hand computations."""

import pytest
import torch

from hf_transfer.methods import StepBatch
from hf_transfer.methods.coral import CORAL, CORALConfig, coral_loss


def _batch(fs, ft):
    features = torch.cat([fs, ft]).requires_grad_(True)
    n = len(features)
    domain = torch.cat([torch.zeros(len(fs), dtype=torch.long), torch.ones(len(ft), dtype=torch.long)])
    return StepBatch(torch.zeros(n, 2, requires_grad=True), features, torch.full((n,), -100), domain)


def test_hand_computation():
    # Source varies only along x (values 0, 2: unbiased variance 2), target only along y.
    fs = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    ft = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # ||diag(2, 0) - diag(0, 2)||_F^2 / (4 * 2^2) = 8 / 16
    out = CORAL(CORALConfig(), feature_dim=2, num_labels=2)(_batch(fs, ft))
    assert out.loss.item() == pytest.approx(0.5)


def test_translation_invariant_and_zero_for_equal_covariances():
    fs = torch.randn(10, 4)
    assert coral_loss(fs, fs + 5.0).item() == pytest.approx(0.0, abs=1e-10)
    assert coral_loss(fs, 2.0 * fs).item() > 0.0


@pytest.mark.parametrize("ns,nt", [(16, 16), (8, 13)])
def test_matches_skada_deepcoral_loss(ns, nt):
    skada_losses = pytest.importorskip("skada.deep.losses", reason="needs skada's deep extra", exc_type=ImportError)
    gen = torch.Generator().manual_seed(0)
    fs = torch.randn(ns, 6, generator=gen, dtype=torch.float64)
    ft = 1.5 * torch.randn(nt, 6, generator=gen, dtype=torch.float64) + 0.3
    ours = CORAL(CORALConfig(), feature_dim=6, num_labels=2)(_batch(fs.float(), ft.float())).loss
    ref = skada_losses.deepcoral_loss(fs, ft)
    assert ref.item() > 0.01
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_covariance_matches_torch_cov():
    x = torch.randn(9, 3, dtype=torch.float64)
    from hf_transfer.methods.coral import covariance

    torch.testing.assert_close(covariance(x), torch.cov(x.T))


@pytest.mark.parametrize("ns,nt", [(0, 4), (4, 0), (1, 4), (4, 1)])
def test_too_few_rows_give_an_attached_zero(make_batch, ns, nt):
    batch = make_batch(ns, nt)
    out = CORAL(CORALConfig(), feature_dim=5, num_labels=3)(batch)
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    out.loss.backward()
    assert torch.count_nonzero(batch.features.grad) == 0
