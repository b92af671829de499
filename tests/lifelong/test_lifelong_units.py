"""Lifelong metrics, EWC's Fisher diagonal and penalty, L2-SP and the replay buffer against hand computations."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hf_transfer.lifelong import (
    EWC,
    L2SP,
    ReplayBuffer,
    average_accuracy,
    backward_transfer,
    fisher_diagonal,
    forgetting,
    plot_accuracy_matrix,
    summarize,
)

NAN = math.nan
R = [[0.9, NAN, NAN],
     [0.8, 0.85, NAN],
     [0.7, 0.8, 0.9]]


def test_metrics_by_hand():
    assert [average_accuracy(R, i) for i in range(3)] == pytest.approx([0.9, 0.825, 0.8])
    # F1 = 0.9 - 0.8; F2 = mean(max(0.9, 0.8) - 0.7, 0.85 - 0.8)
    assert [forgetting(R, i) for i in range(3)] == pytest.approx([0.0, 0.1, 0.125])
    assert backward_transfer(R) == pytest.approx(((0.7 - 0.9) + (0.8 - 0.85)) / 2)
    s = summarize(R)
    assert s["average_accuracy"] == pytest.approx(0.8) and s["forgetting_per_step"] == pytest.approx([0, 0.1, 0.125])


def test_forgetting_uses_the_best_accuracy_since_learning():
    # task 0 improves while task 1 trains (0.6 -> 0.7) and then drops to 0.65: forgetting is 0.7 - 0.65, not 0.6 - 0.65
    r = [[0.6, 0.5, 0.5], [0.7, 0.8, 0.5], [0.65, 0.8, 0.9]]
    assert forgetting(r, 2) == pytest.approx(((0.7 - 0.65) + 0.0) / 2)
    assert backward_transfer(r) == pytest.approx(((0.65 - 0.6) + 0.0) / 2)


def test_plot_writes_a_png(tmp_path):
    path = plot_accuracy_matrix(np.array(R), ["a", "b", "c"], tmp_path / "m.png", title="naive")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Softmax(nn.Module):
    """Linear softmax classifier with a `.logits` output, like a transformers model."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.5, -1.0], [0.2, 0.3]]))
            self.lin.bias.copy_(torch.tensor([0.1, -0.1]))

    def forward(self, x, **_):
        return SimpleNamespace(logits=self.lin(x))


def test_fisher_diagonal_by_hand():
    model = Softmax()
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]])
    y = np.array([0, 1, 1])
    batches = [{"x": torch.tensor(x[:2], dtype=torch.float32), "labels": torch.tensor(y[:2])},
               {"x": torch.tensor(x[2:], dtype=torch.float32), "labels": torch.tensor(y[2:])}]
    w, b = model.lin.weight.detach().double().numpy(), model.lin.bias.detach().double().numpy()
    fw, fb = np.zeros_like(w), np.zeros_like(b)
    for xi, yi in zip(x, y):
        z = w @ xi + b
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        d = np.eye(2)[yi] - p  # d log p(y|x) / d z
        fw += np.outer(d, xi) ** 2
        fb += d**2
    fisher = fisher_diagonal(model, batches)
    assert np.allclose(fisher["lin.weight"].numpy(), fw / 3, atol=1e-6)
    assert np.allclose(fisher["lin.bias"].numpy(), fb / 3, atol=1e-6)
    assert np.allclose(fisher_diagonal(model, batches, max_examples=1)["lin.bias"].numpy(),
                       (np.eye(2)[0] - np.exp(w @ x[0] + b) / np.exp(w @ x[0] + b).sum()) ** 2, atol=1e-6)


def test_ewc_penalty_and_online_accumulation():
    model = Softmax()
    batches = [{"x": torch.tensor([[1.0, 2.0]]), "labels": torch.tensor([0])}]
    ewc = EWC(weight=4.0, gamma=0.5)
    ewc.consolidate(model, batches)
    f1 = {k: v.clone() for k, v in ewc.fisher.items()}
    assert ewc.penalty(model).item() == 0.0  # at the anchor
    with torch.no_grad():
        model.lin.bias.add_(torch.tensor([1.0, -2.0]))
    expected = 0.5 * 4.0 * float((f1["lin.bias"] * torch.tensor([1.0, 4.0])).sum())
    assert ewc.penalty(model).item() == pytest.approx(expected, rel=1e-6)
    ewc.consolidate(model, batches)  # F <- 0.5 F_1 + F_2, anchor moves
    f2 = fisher_diagonal(model, batches)
    assert torch.allclose(ewc.fisher["lin.bias"], 0.5 * f1["lin.bias"] + f2["lin.bias"])
    assert torch.equal(ewc.anchor["lin.bias"], model.lin.bias.detach())


def test_l2sp_penalty_and_gradient():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    reg = L2SP(model, head=["1.weight", "1.bias"], alpha=0.3, beta=0.1)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # 4 entries moved by 1
        model[0].bias.sub_(2.0)  # 2 entries moved by 2
    head = float((model[1].weight.detach() ** 2).sum() + (model[1].bias.detach() ** 2).sum())
    penalty = reg.penalty(model)
    assert penalty.item() == pytest.approx(0.5 * 0.3 * (4 * 1 + 2 * 4) + 0.5 * 0.1 * head, rel=1e-6)
    penalty.backward()
    assert torch.allclose(model[0].weight.grad, torch.full((2, 2), 0.3))  # alpha * (w - w0)
    assert torch.allclose(model[1].weight.grad, 0.1 * model[1].weight.detach())


def test_replay_buffer_is_balanced_and_seeded():
    a = [{"id": f"a{i}"} for i in range(10)]
    b = [{"id": f"b{i}"} for i in range(10)]
    buf = ReplayBuffer(6, seed=1)
    buf.add_task("a", a)
    first = [r["id"] for r in buf.rows()]
    assert len(first) == 6 and len(set(first)) == 6
    buf.add_task("b", b)
    assert buf.counts() == {"a": 3, "b": 3}
    assert [r["id"] for r in buf.rows()][:3] == first[:3]  # older tasks give rows up, never swap them
    again = ReplayBuffer(6, seed=1)
    again.add_task("a", a)
    again.add_task("b", b)
    assert again.rows() == buf.rows()
    with pytest.raises(ValueError, match="already"):
        buf.add_task("a", a)
