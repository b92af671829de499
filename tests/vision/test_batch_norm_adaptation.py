"""adabn (target batch-norm statistics after training) and dsbn (per-domain batch norm while training), against hand
computations on tiny convolutional nets, then end to end on a tiny random ResNet."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import hf_transfer
from hf_transfer.errors import RecipeError
from hf_transfer.methods._batchnorm import batch_norm_layers, row_chunks
from hf_transfer.methods.adabn import adapt_batch_norm
from hf_transfer.methods.dsbn import DomainSplit, SplitCollator, domain_batch_norm


class TinyConvNet(nn.Module):
    """Conv-BN-ReLU twice, pooled, then Linear-BN1d-ReLU-Dropout-Linear: 2-d and 1-d batch norm, a dropout that
    must be off while statistics are estimated. Input (B, 3, 8, 8); output (B, 4)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, 4),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.body(pixel_values)


def _net(seed: int = 0) -> TinyConvNet:
    torch.manual_seed(seed)
    net = TinyConvNet()
    with torch.no_grad():  # statistics far from the data's, so an estimate that did not happen shows
        for _, bn in batch_norm_layers(net):
            bn.running_mean.uniform_(-3, 3)
            bn.running_var.uniform_(5, 9)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net


def _reference_statistics(net: nn.Module, chunks: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Each batch-norm layer's input over all chunks (forward hooks), the layers normalising with each chunk's own
    statistics (plain training-mode BatchNorm) and dropout off: mean and unbiased variance per channel."""
    ref = copy.deepcopy(net).eval()
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, bn in batch_norm_layers(ref):
        bn.train()
        hooks.append(bn.register_forward_hook(
            lambda m, args, out, name=name: seen.setdefault(name, []).append(args[0].detach().double())))
    with torch.no_grad():
        for x in chunks:
            ref(x)
    for h in hooks:
        h.remove()
    out = {}
    for name, xs in seen.items():
        x = torch.cat(xs)
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (channels, every row and position)
        out[name] = (flat.mean(1), flat.var(1, unbiased=True))
    return out


@pytest.mark.parametrize("batch_size", [100, 10])
def test_adabn_statistics_are_the_layer_inputs_over_all_target_rows(batch_size):
    net = _net()
    net.train()  # adapt_batch_norm puts it in eval mode itself, and gives the mode back
    x = torch.randn(37, 3, 8, 8) * 2.0 + 0.7
    chunks = [x[a:b] for a, b in row_chunks(len(x), batch_size)]
    assert sum(len(c) for c in chunks) == 37 and min(len(c) for c in chunks) >= 2
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    expected = _reference_statistics(net, chunks)

    written = adapt_batch_norm(net, ({"pixel_values": c} for c in chunks))

    assert written == 3 and net.training
    for name, bn in batch_norm_layers(net):
        mean, var = expected[name]
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-5)
        assert "forward" not in bn.__dict__  # the layer's own forward is back
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())  # statistics only


def test_adabn_in_one_batch_is_torch_batchnorm_cumulative_average():
    """One batch of all rows: the same buffers as torch's own BatchNorm in training mode with momentum None."""
    net = _net(1)
    x = torch.randn(20, 3, 8, 8)
    ref = copy.deepcopy(net).eval()
    for _, bn in batch_norm_layers(ref):
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        ref(x)
    adapt_batch_norm(net, [{"pixel_values": x}])
    for (_, ours), (_, theirs) in zip(batch_norm_layers(net), batch_norm_layers(ref)):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)
    # and in eval mode the adapted model is that model
    torch.testing.assert_close(net.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)


def test_dsbn_normalises_source_and_target_rows_separately():
    net = _net(2).train()
    net.body[11].p = 0.0  # dropout off, so outputs compare exactly
    source, target = torch.randn(6, 3, 8, 8), torch.randn(5, 3, 8, 8) * 3 + 1
    alone_source, alone_target, mixed = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    split = DomainSplit()
    for _, bn in batch_norm_layers(net):
        bn.forward = domain_batch_norm(bn, split)

    split.num_source = 6
    out = net(torch.cat([source, target]))
    split.num_source = None

    # each domain's rows come out as if the batch had held that domain alone (the hand check: BN on those rows only)
    torch.testing.assert_close(out[:6], alone_source(source), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[6:], alone_target(target), rtol=1e-5, atol=1e-5)
    # ... which is not what one batch of both gives
    assert not torch.allclose(out[:6], mixed(torch.cat([source, target]))[:6], atol=1e-3)
    # the running statistics follow the target rows only: the exported buffers are the target's
    for (_, ours), (_, theirs) in zip(batch_norm_layers(net), batch_norm_layers(alone_target)):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)
        assert int(ours.num_batches_tracked) == 1
    # eval mode, or a forward with no split: the layers' own forward
    torch.testing.assert_close(net.eval()(source), alone_target.eval()(source))


def test_split_collator_counts_source_rows_and_refuses_mixed_order():
    def collate(rows):
        return {"pixel_values": torch.zeros(len(rows), 1), "domain": torch.tensor([r["d"] for r in rows])}

    batch = SplitCollator(collate)([{"d": 0}, {"d": 0}, {"d": 1}])
    assert batch["dsbn_num_source"] == 2
    assert "dsbn_num_source" not in SplitCollator(lambda rows: {"pixel_values": torch.zeros(1)})([{}])
    with pytest.raises(RecipeError, match="source rows first"):
        SplitCollator(collate)([{"d": 0}, {"d": 1}, {"d": 0}])


# ---- end to end on a tiny random ResNet --------------------------------------------------------------------------


def _usps_pixels(digits_npz: str, model_dir) -> torch.Tensor:
    from transformers import AutoImageProcessor

    from hf_transfer.vision.data import array_to_pil, to_rgb

    processor = AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")
    images = [to_rgb(array_to_pil(a, where="test")) for a in np.load(digits_npz)["usps_x"]]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def test_adabn_end_to_end_exports_target_statistics(tiny_resnet_dir, image_recipe, digits_npz):
    recipe = {**image_recipe, "model_name_or_path": tiny_resnet_dir, "method": ["finetune", "adabn"],
              "adabn": {"batch_size": 64}}  # all 40 target rows in one batch: each layer's exact target statistics
    result = hf_transfer.train(recipe)
    assert result.metrics["adabn_rows"] == 40 and result.metrics["adabn_layers"] > 0

    from transformers import AutoModelForImageClassification

    exported = AutoModelForImageClassification.from_pretrained(str(result.output_dir)).eval()
    pixels = _usps_pixels(digits_npz, result.output_dir)
    expected = _reference_statistics(exported, [pixels])
    layers = batch_norm_layers(exported)
    assert len(layers) == result.metrics["adabn_layers"]
    for name, bn in layers:
        mean, var = expected[name]
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-4)


def test_dann_with_dsbn_trains_and_exports_a_plain_model(tiny_resnet_dir, image_recipe, monkeypatch):
    import hf_transfer.methods.dsbn as dsbn

    splits = []  # what the layers were told at each forward of a paired batch

    class Recorded(dsbn.DomainSplit):
        def __setattr__(self, key, value):
            if value is not None:
                splits.append(value)
            super().__setattr__(key, value)

    monkeypatch.setattr(dsbn, "DomainSplit", Recorded)
    recipe = {**image_recipe, "model_name_or_path": tiny_resnet_dir, "method": ["dann", "dsbn"]}
    result = hf_transfer.train(recipe)
    assert np.isfinite(result.metrics["train_loss"])
    assert splits == [8, 8]  # two steps of 8 source + 8 target rows reached the layers; evaluation batches none
    # the patch is gone after training, and the saved weights hold only the architecture's own tensors
    assert all("forward" not in bn.__dict__ for _, bn in batch_norm_layers(result.model))
    assert not result.model._forward_pre_hooks or all(
        "take_split" not in getattr(h, "__name__", "") for h in result.model._forward_pre_hooks.values())
    from transformers import AutoModelForImageClassification

    exported = AutoModelForImageClassification.from_pretrained(str(result.output_dir))
    assert set(exported.state_dict()) == set(result.model.state_dict())


def test_dsbn_and_adabn_refusals(tiny_resnet_dir, tiny_vit_dir, image_recipe):
    with pytest.raises(RecipeError, match="dsbn"):
        hf_transfer.train({**image_recipe, "model_name_or_path": tiny_resnet_dir, "method": ["finetune", "dsbn"]})
    with pytest.raises(RecipeError, match="no batch-norm layer"):
        hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir, "method": ["finetune", "adabn"]})
    with pytest.raises(RecipeError, match="adabn.batch_size"):
        hf_transfer.train({**image_recipe, "model_name_or_path": tiny_resnet_dir, "method": ["finetune", "adabn"],
                           "adabn": {"batch_size": 1}})


@pytest.mark.parametrize("name, methods", [("adabn.yaml", ["finetune", "adabn"]),
                                           ("digits_dann_dsbn.yaml", ["dann", "dsbn", "adabn"])])
def test_shipped_batch_norm_recipes_parse(name, methods):
    from pathlib import Path

    from hf_transfer.recipe import load_recipe

    recipe = load_recipe(str(Path(__file__).resolve().parents[2] / "recipes" / "image_classification" / name),
                         {"source_data": "unused.npz", "target_data": "unused.npz"})
    assert recipe.methods.method == methods
    assert recipe.method_configs["adabn"].batch_size == 256


def test_adabn_gives_a_frozen_backbone_the_source_statistics_before_training():
    """A frozen backbone's layers keep their pretraining statistics while the head trains; AdaBN's premise (the head
    learned on source-normalised features) needs them to hold the source's, then the target's at the end."""
    from types import SimpleNamespace

    from hf_transfer.methods.adabn import AdaBNConfig, prepare_adabn

    net = _net(3)
    for p in net.body[:6].parameters():  # the convolutional part is frozen; the last batch norm trains
        p.requires_grad_(False)
    source, target = torch.randn(30, 3, 8, 8), torch.randn(20, 3, 8, 8) * 2 + 1
    trained = batch_norm_layers(net)[2][1]
    before = trained.running_mean.clone()
    context = {
        "args": SimpleNamespace(fsdp=None, deepspeed=None), "model": net, "metrics": {}, "callbacks": [],
        "data": SimpleNamespace(train=[{"x": x} for x in source], target=[{"x": x} for x in target]),
        "collator": lambda rows: {"pixel_values": torch.stack([r["x"] for r in rows])},
    }
    expected = _reference_statistics(net, [source])

    prepare_adabn(AdaBNConfig(batch_size=64), context)

    assert context["metrics"]["adabn_source_layers"] == 2
    for name, bn in batch_norm_layers(net)[:2]:  # the frozen ones: the source's statistics
        torch.testing.assert_close(bn.running_mean.double(), expected[name][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), expected[name][1], rtol=1e-5, atol=1e-5)
    assert torch.equal(trained.running_mean, before)  # a layer that trains tracks the source itself
    # at the end of training: every layer gets the target's
    context["callbacks"][0].on_train_end(None, None, None, model=net)
    expected = _reference_statistics(net, [target])
    for name, bn in batch_norm_layers(net):
        torch.testing.assert_close(bn.running_mean.double(), expected[name][0], rtol=1e-5, atol=1e-5)
    assert context["metrics"]["adabn_rows"] == 20
