"""Every registered loss computes without reading a device value on the host, and gives the same loss whatever the
order of source and target rows.

A host read (``.item()``, ``if mask.any():``, ``features[mask]``) makes a GPU step wait for every queued kernel. The
methods weight rows by domain instead of selecting them; :class:`hf_transfer.profiling.HostReads` counts what is
left. Rows come interleaved after the multi-process gather (process 0's source and target rows, then process 1's),
so a method must not assume the source rows come first.
"""

import pytest
import torch

from hf_transfer.methods import StepBatch
from hf_transfer.methods.registry import available_methods, get_method_spec
from hf_transfer.profiling import HostReads

FEATURE_DIM, NUM_LABELS = 5, 3

# Every registered method with a loss module, in each configuration that takes its own code path.
CONFIGS = {
    "mmd": [{}, {"estimator": "linear"}, {"joint": True}, {"estimator": "linear", "joint": True}],
    "coral": [{}],
    "mcc": [{}],
    "entropy": [{}],
    "dann": [{}],
    "cdan": [{}, {"entropy_conditioning": True, "multilinear_map": "randomized", "randomized_dim": 8}],
    "graph_laplacian": [{}, {"normalized": True}],
    "bss": [{}, {"rows": "all", "k": 2}],
}
# Methods bound to a model by their prepare hook; their own test files run them under HostReads on a tiny model.
MODEL_BOUND = {"l2sp", "lwf", "mlm"}
CASES = [(name, fields) for name, variants in CONFIGS.items() for fields in variants]


def build(name: str, fields: dict):
    spec = get_method_spec(name)
    torch.manual_seed(0)
    method = spec.method_class(spec.config_class(**fields), feature_dim=FEATURE_DIM, num_labels=NUM_LABELS)
    if name == "graph_laplacian":  # what its prepare hook attaches: a class affinity (classes 0-1, 1-2 related)
        method.attach(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.5, 0.0]]), None)
    return method.eval()  # no dropout, so two calls compare exactly


def permuted(batch: StepBatch, order: torch.Tensor) -> StepBatch:
    def take(t):
        return t.detach()[order].clone().requires_grad_(t.requires_grad)

    return StepBatch(take(batch.logits), take(batch.features), batch.labels[order], batch.domain[order],
                     progress=batch.progress)


def test_every_method_with_a_loss_is_covered():
    shipped = [get_method_spec(n) for n in available_methods()]  # other tests register toy methods too
    with_loss = {s.name for s in shipped if s.method_class and s.method_class.__module__.startswith("hf_transfer.")}
    assert with_loss == set(CONFIGS) | MODEL_BOUND


@pytest.mark.parametrize("name,fields", CASES)
def test_forward_and_backward_read_nothing_on_the_host(make_batch, name, fields):
    method = build(name, fields)
    batch = make_batch(6, 5, feature_dim=FEATURE_DIM, num_labels=NUM_LABELS, shift=0.5)
    reads = HostReads()
    with reads:
        out = method(batch)
        out.loss.backward()
    assert dict(reads.found) == {}
    grads = [g for g in (batch.features.grad, batch.logits.grad) if g is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,fields", CASES)
def test_loss_and_gradients_do_not_depend_on_where_the_source_rows_are(make_batch, name, fields):
    method = build(name, fields)
    ordered = make_batch(6, 5, feature_dim=FEATURE_DIM, num_labels=NUM_LABELS, shift=0.5)
    # Two "processes": rows 0-2 source + 6-8 target, then 3-5 source + 9-10 target; each side keeps its order.
    order = torch.tensor([0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10])
    mixed = permuted(ordered, order)
    a, b = method(ordered).loss, method(mixed).loss
    assert a.item() != 0.0
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    a.backward()
    b.backward()
    for field in ("features", "logits"):
        grad, reference = getattr(mixed, field).grad, getattr(ordered, field).grad
        assert (grad is None) == (reference is None), field
        if reference is not None:
            torch.testing.assert_close(grad, reference[order], rtol=1e-4, atol=1e-7)
