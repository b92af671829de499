"""``method: lwf``: the distances against direct computations, the reference features against a separately loaded
pretrained model, and the frozen copy through train(): unchanged, out of the optimizer, checkpoints and export."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_transfer
from hf_transfer.backbones import FeatureTap, find_feature_module
from hf_transfer.errors import RecipeError
from hf_transfer.methods import StepBatch, get_method_spec
from hf_transfer.methods.lwf import LwF, LwFConfig, feature_distance
from hf_transfer.profiling import HostReads


def test_distances_against_direct_computation():
    gen = torch.Generator().manual_seed(0)
    f, g = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    torch.testing.assert_close(feature_distance(f, g, distance="mse"), F.mse_loss(f, g))
    cos = torch.stack([f[i] @ g[i] / (f[i].norm() * g[i].norm()) for i in range(6)])
    torch.testing.assert_close(feature_distance(f, g, distance="cosine"), (1 - cos).mean())
    weight = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    rows = weight.bool()
    torch.testing.assert_close(feature_distance(f, g, distance="mse", row_weight=weight), F.mse_loss(f[rows], g[rows]))
    torch.testing.assert_close(feature_distance(f, g, distance="cosine", row_weight=weight), (1 - cos[rows]).mean())
    assert feature_distance(2 * f, f, distance="cosine").abs().item() < 1e-6  # blind to scale


def bound_model(model_dir: str):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    _, feature_module = find_feature_module(model, 2)
    calls = []
    model.bert.register_forward_hook(lambda *args: calls.append(1))  # another method's hook (mlm keeps one)
    method = LwF(LwFConfig(), feature_dim=32, num_labels=2)
    get_method_spec("lwf").prepare(method.config, {"model": model, "methods": {"lwf": method},
                                                   "feature_module": feature_module})
    method.reference_features({"input_ids": torch.tensor([[101, 102]])})
    assert calls == []  # the copy does not carry the model's forward hooks
    return model, feature_module, method


def test_reference_features_are_the_pretrained_models(tiny_model_dir):
    model, feature_module, method = bound_model(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    inputs = dict(tokenizer(["a fine kettle", "the plot drags on and on"], padding=True, return_tensors="pt"))
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
    tap = FeatureTap(find_feature_module(pretrained, 2)[1])
    with torch.no_grad():
        pretrained(**inputs)
    expected = tap.pop()
    with torch.no_grad():  # training moves the model, never the copy
        for p in model.parameters():
            p.add_(0.05)
    torch.testing.assert_close(method.reference_features(inputs), expected)

    model.eval()
    model_tap = FeatureTap(feature_module)
    logits = model(**inputs).logits
    features = model_tap.pop()
    batch = StepBatch(logits=logits, features=features, labels=torch.tensor([0, 1]), domain=torch.zeros(2).long(),
                      inputs=inputs)
    reads = HostReads()
    with reads:
        loss = method(batch).loss
        loss.backward()
    # The reference model's forward reads what the model's own forward reads (transformers' attention-mask check);
    # the method itself adds nothing.
    assert [site for site in reads.found if "hf_transfer/" in site] == []
    torch.testing.assert_close(loss, F.mse_loss(features, expected))
    assert model.classifier.weight.grad is None and model.bert.pooler.dense.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in method._reference.value.parameters())


@pytest.mark.parametrize("fields,message", [({"distance": "l1"}, "lwf.distance"), ({"rows": "target"}, "lwf.rows")])
def test_bad_fields_are_recipe_errors(fields, message):
    with pytest.raises(RecipeError, match=message):
        LwFConfig(**fields)


def test_train_keeps_the_reference_frozen_and_out_of_everything_saved(tiny_recipe, tiny_model_dir):
    tiny_recipe.update(method=["lwf"], lwf={"distance": "cosine", "trade_off": 10.0}, save_strategy="steps",
                       save_steps=4)
    result = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"])
    losses = [entry["lwf/loss"] for entry in result.trainer.state.log_history if "lwf/loss" in entry]
    assert losses and all(0 < v < 2 for v in losses)  # 1 - cos lies in [0, 2]; the model moved, so not 0

    method = result.trainer.method_stack.methods["lwf"]
    reference = method._reference.value
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).state_dict()
    backbone = {k: v for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    assert backbone and all(torch.equal(v.cpu(), pretrained[k]) for k, v in backbone.items())
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    in_optimizer = {id(p) for group in result.trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in reference.parameters()}
    assert not method.state_dict()  # no reference weights in the method state of a checkpoint
    assert not list((result.output_dir / "checkpoint-4").glob("transfer_methods*"))

    exported = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert set(exported.state_dict()) == set(pretrained)
