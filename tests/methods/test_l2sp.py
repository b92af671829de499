"""``method: l2sp``: the penalty against a loop over named parameters, its gradient in closed form, the anchor kept
at the pretrained weights (also on resume), and the export a plain classifier."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

import hf_transfer
from hf_transfer.backbones import head_parameter_names
from hf_transfer.errors import RecipeError
from hf_transfer.lifelong import L2SP as LifelongL2SP
from hf_transfer.methods import get_method_spec
from hf_transfer.methods.l2sp import L2SP, L2SPConfig, l2sp_penalty
from hf_transfer.profiling import HostReads


def tiny_classifier(model_dir: str) -> nn.Module:
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)


def bound(model: nn.Module, **fields) -> L2SP:
    method = L2SP(L2SPConfig(**fields), feature_dim=32, num_labels=2)
    get_method_spec("l2sp").prepare(method.config, {"model": model, "methods": {"l2sp": method}})
    return method


def test_penalty_matches_a_loop_over_named_parameters(tiny_model_dir, make_batch):
    model = tiny_classifier(tiny_model_dir)
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = bound(model, alpha=0.3, beta=0.05)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    model.bert.embeddings.requires_grad_(False)  # frozen parameters are not penalised

    head = set(head_parameter_names(model))
    assert head == {"classifier.weight", "classifier.bias"}
    shared_sq = sum(float(((p.detach() - pretrained[n]) ** 2).sum()) for n, p in model.named_parameters()
                    if p.requires_grad and n not in head)
    head_sq = sum(float((p.detach() ** 2).sum()) for n, p in model.named_parameters() if n in head)
    out = method(make_batch(4, 0, feature_dim=32, num_labels=2))
    assert out.loss.item() == pytest.approx(0.5 * 0.3 * shared_sq + 0.5 * 0.05 * head_sq, rel=1e-5)
    assert out.logs["distance"].item() == pytest.approx(shared_sq**0.5, rel=1e-5)
    assert out.logs["head_norm"].item() == pytest.approx(head_sq**0.5, rel=1e-5)

    out.loss.backward()  # d/dw: alpha (w - w0) on shared parameters, beta w on the head, nothing on frozen ones
    layer = model.bert.encoder.layer[0].attention.self.query.weight
    name = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(layer.grad, 0.3 * (layer.detach() - pretrained[name]))
    torch.testing.assert_close(model.classifier.weight.grad, 0.05 * model.classifier.weight.detach())
    assert model.bert.embeddings.word_embeddings.weight.grad is None


def test_lifelong_l2sp_is_the_same_penalty():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    lifelong = LifelongL2SP(model, head=["1.weight", "1.bias"], alpha=0.2, beta=0.1)
    with torch.no_grad():
        model[0].weight.add_(0.5)
    expected, _, _ = l2sp_penalty(model.named_parameters(), lifelong.anchor, {"1.weight", "1.bias"}, alpha=0.2,
                                  beta=0.1)
    by_hand = 0.5 * 0.2 * 9 * 0.25 + 0.5 * 0.1 * float(sum((p.detach() ** 2).sum() for p in model[1].parameters()))
    assert lifelong.penalty(model).item() == pytest.approx(expected.item()) == pytest.approx(by_hand, rel=1e-6)


def test_step_reads_nothing_on_the_host(tiny_model_dir, make_batch):
    model = tiny_classifier(tiny_model_dir)
    method = bound(model)
    reads = HostReads()
    with reads:
        method(make_batch(4, 0, feature_dim=32, num_labels=2)).loss.backward()
    assert dict(reads.found) == {}


@pytest.mark.parametrize("fields,message", [({"alpha": -1.0}, "l2sp.alpha: must be >= 0"),
                                            ({"beta": -0.1}, "l2sp.beta: must be >= 0")])
def test_bad_fields_are_recipe_errors(fields, message):
    with pytest.raises(RecipeError, match=message):
        L2SPConfig(**fields)


def test_train_logs_keeps_the_anchor_and_exports_a_plain_classifier(tiny_recipe, tiny_model_dir, tmp_path):
    tiny_recipe.update(method=["l2sp"], l2sp={"alpha": 0.5}, weight_decay=0.0, save_strategy="steps", save_steps=2)
    result = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"])
    logged = {key for entry in result.trainer.state.log_history for key in entry}
    assert {"l2sp/loss", "l2sp/distance", "l2sp/head_norm"} <= logged

    method = result.trainer.method_stack.methods["l2sp"]
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).state_dict()
    anchor = method._anchor.value
    assert anchor and all(torch.equal(t.cpu(), pretrained[n]) for n, t in anchor.items())  # untouched by training
    trained = dict(result.model.named_parameters())
    assert any(not torch.equal(trained[n].detach().cpu(), anchor[n].cpu()) for n in anchor)  # the model did move
    assert not list(method.parameters()) and not method.state_dict()  # nothing to optimise, save or export

    exported = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert set(exported.state_dict()) == set(pretrained)

    # Resuming rebuilds the anchor from the pretrained model, not from the checkpoint's weights.
    tiny_recipe.update(max_steps=6, resume_from_checkpoint="latest")
    resumed = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"])
    assert resumed.trainer.state.global_step == 6
    anchor = resumed.trainer.method_stack.methods["l2sp"]._anchor.value
    assert all(torch.equal(t.cpu(), pretrained[n]) for n, t in anchor.items())
