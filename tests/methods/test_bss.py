"""``method: bss``: the shrinkage term against torch.linalg.svdvals by hand, TLlib's formula and a closed form; row
selection without indexing; the method through train()."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import hf_transfer
from hf_transfer.errors import RecipeError
from hf_transfer.methods.bss import BSS, BSSConfig, spectral_shrinkage


def tllib_bss(feature: torch.Tensor, k: int) -> torch.Tensor:
    """TLlib's ``BatchSpectralShrinkage.forward`` (tllib/regularization/bss.py), as written there."""
    result = 0
    u, s, v = torch.svd(feature.t())
    num = s.size(0)
    for i in range(k):
        result += torch.pow(s[num - 1 - i], 2)
    return result


@pytest.mark.parametrize("rows,dim", [(8, 5), (5, 8)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_smallest_squared_singular_values(rows, dim, k):
    features = torch.randn(rows, dim, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    by_hand = torch.linalg.svdvals(features).sort().values[:k].pow(2).sum()
    torch.testing.assert_close(spectral_shrinkage(features, k), by_hand)
    torch.testing.assert_close(spectral_shrinkage(features, k), tllib_bss(features, k))


def test_closed_form_on_a_matrix_of_known_spectrum():
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    sigma = torch.tensor([5.0, 3.0, 0.5, 0.25], dtype=torch.float64)
    features = u @ torch.diag(sigma) @ v.T
    assert spectral_shrinkage(features, 1).item() == pytest.approx(0.0625)
    assert spectral_shrinkage(features, 2).item() == pytest.approx(0.3125)
    # d(sigma_min^2)/dF = 2 sigma_min u_min v_min^T
    features.requires_grad_(True)
    spectral_shrinkage(features, 1).backward()
    torch.testing.assert_close(features.grad, 2 * 0.25 * torch.outer(u[:, 3], v[:, 3]))


@pytest.mark.parametrize("k", [1, 2, 7])
def test_selected_rows_equal_the_submatrix(k):
    """Zeroed rows add zero singular values only: the masked matrix gives the selected rows' k smallest (all of them
    when there are fewer than k)."""
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    weight = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=torch.float64)
    sub = features[weight.bool()]
    by_hand = torch.linalg.svdvals(sub).sort().values[:k].pow(2).sum()
    torch.testing.assert_close(spectral_shrinkage(features, k, weight), by_hand)
    torch.testing.assert_close(spectral_shrinkage(features, k, weight), tllib_bss(sub, min(k, 5)))


def test_method_penalises_the_source_rows_or_all_rows(make_batch):
    batch = make_batch(6, 5, feature_dim=8, num_labels=3, shift=1.0)
    source = batch.features.detach()[:6]
    out = BSS(BSSConfig(k=2), feature_dim=8, num_labels=3)(batch)
    torch.testing.assert_close(out.loss, tllib_bss(source, 2))
    every = BSS(BSSConfig(k=2, rows="all"), feature_dim=8, num_labels=3)(batch)
    torch.testing.assert_close(every.loss, tllib_bss(batch.features.detach(), 2))
    out.loss.backward()
    assert batch.features.grad[6:].abs().max() == 0  # target rows get no gradient from the source spectrum
    assert batch.features.grad[:6].abs().max() > 0


@pytest.mark.parametrize("fields,message", [({"k": 0}, "bss.k: must be > 0"), ({"k": 1.5}, "bss.k: must be a whole"),
                                            ({"rows": "target"}, "bss.rows")])
def test_bad_fields_are_recipe_errors(fields, message):
    with pytest.raises(RecipeError, match=message):
        BSSConfig(**fields)


def test_train_logs_and_exports_a_plain_classifier(tiny_recipe, tiny_model_dir):
    tiny_recipe.update(method=["bss", "dann"], bss={"rows": "all", "trade_off": 0.01}, dann={"hidden_size": 8})
    result = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"])
    losses = [entry["bss/loss"] for entry in result.trainer.state.log_history if "bss/loss" in entry]
    assert losses and all(v > 0 for v in losses)
    exported = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert set(exported.state_dict()) == set(pretrained.state_dict())
