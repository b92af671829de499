"""Every domain-adaptation method: registration, config contract, validation errors, degenerate batches."""

import dataclasses

import pytest
import torch

from hf_transfer.errors import RecipeError
from hf_transfer.methods import MethodConfig, TransferMethod, available_methods, get_method_spec

DA_METHODS = ["cdan", "coral", "dann", "entropy", "mcc", "mmd"]
WITH_PARAMETERS = {"cdan", "dann"}


def _build(name, feature_dim=5, num_labels=3, **fields):
    spec = get_method_spec(name)
    return spec.method_class(spec.config_class(**fields), feature_dim=feature_dim, num_labels=num_labels)


def test_all_registered_and_need_target():
    assert set(DA_METHODS) <= set(available_methods())
    for name in DA_METHODS:
        spec = get_method_spec(name)
        assert spec.needs_target, name
        assert issubclass(spec.method_class, TransferMethod) and spec.method_class.name == name
        assert issubclass(spec.config_class, MethodConfig) and spec.method_class.config_class is spec.config_class


@pytest.mark.parametrize("name", DA_METHODS)
def test_every_field_is_documented(name):
    for f in dataclasses.fields(get_method_spec(name).config_class):
        assert f.metadata.get("help", "").strip(), f"{name}.{f.name} has no help"


@pytest.mark.parametrize("name", DA_METHODS)
def test_constructor_is_keyword_only_and_parameters_are_where_expected(name):
    spec = get_method_spec(name)
    with pytest.raises(TypeError):
        spec.method_class(spec.config_class(), 5, 3)
    n_params = sum(p.numel() for p in _build(name).parameters())
    assert (n_params > 0) == (name in WITH_PARAMETERS)


@pytest.mark.parametrize(
    "name,fields,message",
    [
        ("dann", {"hidden_size": -1}, "dann.hidden_size: must be > 0, got -1"),
        ("dann", {"dropout": 1.5}, "dann.dropout: must be in [0, 1), got 1.5"),
        ("dann", {"lambda_schedule": "linear"}, "dann.lambda_schedule: unknown value 'linear'"),
        ("dann", {"gamma": 0.0}, "dann.gamma: must be > 0, got 0.0"),
        ("dann", {"trade_off": -1.0}, "dann.trade_off: must be a finite number >= 0, got -1.0"),
        ("cdan", {"multilinear_map": "outer"}, "cdan.multilinear_map: unknown value 'outer'"),
        ("cdan", {"randomized_dim": 0}, "cdan.randomized_dim: must be > 0, got 0"),
        ("cdan", {"num_layers": -2}, "cdan.num_layers: must be >= 0, got -2"),
        ("mmd", {"estimator": "cubic"}, "mmd.estimator: unknown value 'cubic'"),
        ("mmd", {"kernel_multipliers": []}, "mmd.kernel_multipliers: must list at least one multiplier"),
        ("mmd", {"kernel_multipliers": [1.0, -2.0]}, "mmd.kernel_multipliers: must be > 0, got -2.0"),
        ("mmd", {"bandwidth": 0.0}, "mmd.bandwidth: must be > 0, got 0.0"),
        ("mcc", {"temperature": 0.0}, "mcc.temperature: must be > 0, got 0.0"),
        ("entropy", {"trade_off": float("nan")}, "entropy.trade_off: must be a finite number >= 0"),
        ("coral", {"trade_off": float("inf")}, "coral.trade_off: must be a finite number >= 0"),
    ],
)
def test_invalid_values_raise_recipe_errors_naming_the_field(name, fields, message):
    with pytest.raises(RecipeError) as info:
        get_method_spec(name).config_class(**fields)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("name", DA_METHODS)
@pytest.mark.parametrize("ns,nt", [(0, 6), (6, 0), (1, 1), (1, 6), (6, 1), (2, 2)])
def test_degenerate_batches_give_finite_losses_that_backpropagate(make_batch, name, ns, nt):
    method = _build(name).train()
    batch = make_batch(ns, nt)
    out = method(batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.loss.grad_fn is not None
    out.loss.backward()
    grads = [t.grad for t in (batch.features, batch.logits) if t.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for p in method.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    for v in out.logs.values():  # floats, or detached scalar tensors the trainer averages at logging steps
        assert isinstance(v, float) or (torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad), v


def test_methods_combine_like_the_trainer_does(make_batch):
    """Total = CE(source) + sum(trade_off * loss); every method's parameters receive gradients."""
    names = ["dann", "entropy", "mcc", "mmd", "coral", "cdan"]
    methods = [_build(n, trade_off=0.5) for n in names]
    batch = make_batch(6, 6, shift=1.0)
    src = batch.source_mask
    total = torch.nn.functional.cross_entropy(batch.logits[src], batch.labels[src])
    logs = {}
    for m in methods:
        out = m(batch)
        total = total + m.config.trade_off * out.loss
        logs.update({f"{m.name}/{k}": v for k, v in out.logs.items()})
    total.backward()
    assert torch.isfinite(total)
    assert {"dann/domain_accuracy", "dann/lambda", "cdan/domain_loss", "mmd/bandwidth"} <= set(logs)
    assert batch.features.grad.abs().sum() > 0 and batch.logits.grad.abs().sum() > 0
    for m in methods:
        for p in m.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mmd", "coral", "mcc", "entropy"])
def test_kernel_and_covariance_losses_keep_full_precision_under_autocast(make_batch, name):
    """Mixed-precision training runs methods under autocast; these losses must not be computed in bf16."""
    method = _build(name, feature_dim=16, num_labels=4)
    batch = make_batch(32, 32, feature_dim=16, num_labels=4, shift=0.3)
    batch.features = (batch.features.detach() + 10.0).requires_grad_(True)  # an offset that cancellation would eat
    reference = method(batch).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = method(batch).loss
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference, rel=1e-5)
