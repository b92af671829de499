"""DANN: loss value against skada's DANNLoss and a hand formula, reversed gradients, and adaptation on a toy."""

import pytest
import torch
import torch.nn.functional as F

from hf_transfer.methods import StepBatch
from hf_transfer.methods._layers import dann_lambda
from hf_transfer.methods.dann import DANN, DANNConfig


def _method(dim=5, **kw):
    torch.manual_seed(0)
    method = DANN(DANNConfig(hidden_size=16, dropout=0.0, **kw), feature_dim=dim, num_labels=3)
    return method.eval()


def test_loss_matches_skada_and_hand_formula(make_batch):
    method = _method()
    batch = make_batch(6, 6)
    out = method(batch)
    with torch.no_grad():
        z = method.discriminator(batch.features)
    zs, zt = z[:6], z[6:]
    # source label 0: -log(1 - sigmoid(z)); target label 1: -log(sigmoid(z)); each side averaged, then halved.
    hand = 0.5 * ((-torch.log1p(-torch.sigmoid(zs))).mean() + (-torch.log(torch.sigmoid(zt))).mean())
    torch.testing.assert_close(out.loss.detach(), hand)
    skada_deep = pytest.importorskip("skada.deep", reason="needs skada's deep extra (skorch)", exc_type=ImportError)
    # skada sums the two per-domain mean BCEs of sigmoid outputs; ours is the average of the two sides.
    skada = skada_deep.DANNLoss()(torch.sigmoid(zs), torch.sigmoid(zt))
    torch.testing.assert_close(out.loss.detach(), 0.5 * skada)
    assert out.logs["domain_loss"] == float(out.loss.detach())
    acc = (torch.cat([(zs <= 0), (zt > 0)])).float().mean()
    assert out.logs["domain_accuracy"] == float(acc)


def test_unequal_sides_are_balanced(make_batch):
    method = _method()
    batch = make_batch(2, 7)
    out = method(batch)
    with torch.no_grad():
        z = method.discriminator(batch.features)
    hand = 0.5 * (F.softplus(z[:2]).mean() + F.softplus(-z[2:]).mean())
    torch.testing.assert_close(out.loss.detach(), hand)


def test_source_sample_weight_weights_the_source_terms(make_batch):
    method = _method()
    batch = make_batch(3, 3)
    batch.sample_weight = torch.tensor([1.0, 2.0, 5.0, 9.0, 9.0, 9.0])  # target entries must be ignored
    out = method(batch)
    with torch.no_grad():
        z = method.discriminator(batch.features)
    w = torch.tensor([1.0, 2.0, 5.0])
    hand = 0.5 * ((w * F.softplus(z[:3])).sum() / w.sum() + F.softplus(-z[3:]).mean())
    torch.testing.assert_close(out.loss.detach(), hand)


def test_features_get_the_reversed_scaled_gradient_and_the_discriminator_the_plain_one(make_batch):
    method = _method(lambda_schedule="grl", gamma=10.0)
    batch = make_batch(4, 4, progress=0.3)
    method(batch).loss.backward()
    reversed_grad = batch.features.grad.clone()
    disc_grads = [p.grad.clone() for p in method.discriminator.parameters()]

    # The same loss computed without reversal.
    method.zero_grad()
    features = batch.features.detach().clone().requires_grad_(True)
    z = method.discriminator(features)
    plain = 0.5 * (F.softplus(z[:4]).mean() + F.softplus(-z[4:]).mean())
    plain.backward()
    lam = dann_lambda(0.3)
    assert 0.9 < lam < 1.0
    torch.testing.assert_close(reversed_grad, -lam * features.grad)
    for got, want in zip(disc_grads, [p.grad for p in method.discriminator.parameters()]):
        torch.testing.assert_close(got, want)


def test_lambda_logged_follows_schedule(make_batch):
    assert _method()(make_batch(3, 3, progress=0.0)).logs["lambda"] == 0.0
    logged = _method(lambda_max=0.5)(make_batch(3, 3, progress=0.5)).logs["lambda"]
    assert logged == dann_lambda(0.5, lambda_max=0.5)
    assert _method(lambda_schedule="fixed", lambda_max=0.2)(make_batch(3, 3, progress=0.0)).logs["lambda"] == 0.2


def _domain_gap(extractor, xs, xt):
    """Accuracy of a freshly fitted logistic-regression domain classifier on held-out features (0.5 = no gap)."""
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        fs, ft = extractor(xs).numpy(), extractor(xt).numpy()
    n = len(fs) // 2
    train_x = list(fs[:n]) + list(ft[:n])
    test_x = list(fs[n:]) + list(ft[n:])
    y_train = [0] * n + [1] * n
    y_test = [0] * (len(fs) - n) + [1] * (len(ft) - n)
    return LogisticRegression(max_iter=1000).fit(train_x, y_train).score(test_x, y_test)


def _toy_data(gen, n):
    # The label is the sign of x0; the target domain is shifted by 3 along x1, which the label does not need.
    xs = torch.randn(n, 4, generator=gen)
    xt = torch.randn(n, 4, generator=gen)
    xt[:, 1] += 3.0
    return xs, (xs[:, 0] > 0).long(), xt, (xt[:, 0] > 0).long()


def _train_toy(adapt: bool, steps: int = 200, seed: int = 1):
    """A 4 -> 2 linear feature extractor that starts as the projection on (x0, x1), so the shift starts visible."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 10)
    extractor = torch.nn.Linear(4, 2)
    with torch.no_grad():
        extractor.weight.copy_(torch.eye(2, 4))
        extractor.bias.zero_()
    head = torch.nn.Linear(2, 2)
    method = DANN(DANNConfig(hidden_size=16, dropout=0.0), feature_dim=2, num_labels=2)
    params = [*extractor.parameters(), *head.parameters(), *method.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    domain = torch.cat([torch.zeros(64, dtype=torch.long), torch.ones(64, dtype=torch.long)])
    for step in range(steps):
        xs, ys, xt, _ = _toy_data(gen, 64)
        feats = extractor(torch.cat([xs, xt]))
        logits = head(feats)
        loss = F.cross_entropy(logits[:64], ys)
        if adapt:
            labels = torch.cat([ys, torch.full((64,), -100)])
            batch = StepBatch(logits, feats, labels, domain, progress=step / steps)
            loss = loss + method(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    xs, ys, xt, yt = _toy_data(torch.Generator().manual_seed(99), 2000)
    with torch.no_grad():
        target_acc = (head(extractor(xt)).argmax(1) == yt).float().mean().item()
    return _domain_gap(extractor, xs, xt), target_acc


def test_dann_makes_a_tiny_feature_extractor_domain_invariant():
    gap_plain, acc_plain = _train_toy(adapt=False)
    gap_dann, acc_dann = _train_toy(adapt=True)
    assert gap_plain > 0.88  # source-only training keeps the shift (Bayes accuracy Phi(1.5) ~ 0.93)
    assert gap_dann < 0.6  # DANN's features no longer tell the domains apart
    assert acc_dann > 0.95  # and the task is still solved on the target domain
    assert acc_plain > 0.95


def test_one_sided_batches_give_attached_zero(make_batch):
    method = _method()
    for ns, nt in [(4, 0), (0, 4)]:
        batch = make_batch(ns, nt)
        out = method(batch)
        assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
        out.loss.backward()
        assert torch.count_nonzero(batch.features.grad) == 0
        assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in method.parameters())
        method.zero_grad()
