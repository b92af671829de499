"""MMD (DAN) and JMMD (JAN): estimators against explicit loops and against the closed form for Gaussians."""

import math

import numpy as np
import pytest
import torch

from hf_transfer.methods.mmd import MMD, MMDConfig, mmd2

MULTS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _k(a, b, bw, mults, pa=None, pb=None, pbw=1.68):
    """Reference kernel on two single rows, written out."""
    d2 = float(np.sum((a - b) ** 2))
    k = sum(math.exp(-d2 / (m * bw)) for m in mults)
    if pa is not None:
        k *= math.exp(-float(np.sum((pa - pb) ** 2)) / pbw)
    return k


def gp(p, i):
    return None if p is None else p[i]


def _loop_bandwidth(z):
    n = len(z)
    return np.mean([np.sum((z[i] - z[j]) ** 2) for i in range(n) for j in range(n) if i != j])


def _loop_unbiased(xs, xt, bw, mults, ps=None, pt=None):
    ns, nt = len(xs), len(xt)
    kss = sum(_k(xs[i], xs[j], bw, mults, gp(ps, i), gp(ps, j)) for i in range(ns) for j in range(ns) if i != j)
    ktt = sum(_k(xt[i], xt[j], bw, mults, gp(pt, i), gp(pt, j)) for i in range(nt) for j in range(nt) if i != j)
    kst = sum(_k(xs[i], xt[j], bw, mults, gp(ps, i), gp(pt, j)) for i in range(ns) for j in range(nt))
    return kss / (ns * (ns - 1)) + ktt / (nt * (nt - 1)) - 2 * kst / (ns * nt)


def _loop_linear(xs, xt, bw, mults, ps=None, pt=None):
    m = min(len(xs), len(xt)) // 2
    total = 0.0
    for i in range(m):
        a, b = 2 * i, 2 * i + 1
        total += _k(xs[a], xs[b], bw, mults, gp(ps, a), gp(ps, b)) + _k(xt[a], xt[b], bw, mults, gp(pt, a), gp(pt, b))
        total -= _k(xs[a], xt[b], bw, mults, gp(ps, a), gp(pt, b)) + _k(xs[b], xt[a], bw, mults, gp(ps, b), gp(pt, a))
    return total / m


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("estimator", ["quadratic", "linear"])
@pytest.mark.parametrize("joint", [False, True])
def test_method_matches_explicit_loops(make_batch, estimator, joint):
    batch = make_batch(6, 9, feature_dim=3, num_labels=4, shift=0.7)
    out = MMD(MMDConfig(estimator=estimator, joint=joint), feature_dim=3, num_labels=4)(batch)
    f = batch.features.detach().double().numpy()
    xs, xt = f[:6], f[6:]
    bw = _loop_bandwidth(f)
    ps = pt = None
    if joint:
        p = _softmax(batch.logits.detach().double().numpy())
        ps, pt = p[:6], p[6:]
    ref = (_loop_unbiased if estimator == "quadratic" else _loop_linear)(xs, xt, bw, MULTS, ps, pt)
    assert out.loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert out.logs["bandwidth"] == pytest.approx(bw, rel=1e-5)
    assert out.loss.grad_fn is not None


def test_fixed_bandwidth_and_multipliers_are_used(make_batch):
    batch = make_batch(5, 5, feature_dim=2, shift=1.0)
    out = MMD(MMDConfig(bandwidth=3.0, kernel_multipliers=[1.0, 10.0]), feature_dim=2, num_labels=3)(batch)
    f = batch.features.detach().double().numpy()
    assert out.loss.item() == pytest.approx(_loop_unbiased(f[:5], f[5:], 3.0, (1.0, 10.0)), rel=1e-5)


def _gaussian_mmd2(delta: float, d: int, s: float, bandwidths) -> float:
    """Population MMD^2 between N(0, s^2 I_d) and N(delta e_1, s^2 I_d) for sum_h exp(-||x-y||^2 / h).

    E exp(-||Z||^2/h) for Z ~ N(mu, v I_d) is (1 + 2v/h)^(-d/2) exp(-||mu||^2 / (h + 2v)); X - X' has v = 2 s^2.
    """
    total = 0.0
    for h in bandwidths:
        base = (1 + 4 * s * s / h) ** (-d / 2)
        total += 2 * base * (1 - math.exp(-delta * delta / (h + 4 * s * s)))
    return total


def _gauss(n, d, delta, seed):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, d, generator=gen, dtype=torch.float64)
    xt = torch.randn(n, d, generator=gen, dtype=torch.float64)
    xt[:, 0] += delta
    return xs, xt


def test_estimators_are_unbiased_for_the_gaussian_closed_form_and_linear_is_noisier():
    bw, mults, d = 2.0, (0.5, 1.0, 2.0), 2
    truth = _gaussian_mmd2(1.0, d, 1.0, [m * bw for m in mults])
    # by hand: sum over h in (1, 2, 4) of 2 (1 + 4/h)^-1 (1 - exp(-1 / (h + 4))) = 0.0725 + 0.1023 + 0.1175
    assert truth == pytest.approx(0.2923, abs=1e-3)
    lin, quad = [], []
    for seed in range(40):
        xs, xt = _gauss(400, d, 1.0, seed=seed)
        lin.append(mmd2(xs, xt, estimator="linear", bandwidth=bw, kernel_multipliers=mults).item())
        quad.append(mmd2(xs, xt, estimator="quadratic", bandwidth=bw, kernel_multipliers=mults).item())
    lin, quad = np.array(lin), np.array(quad)
    # Both centred on the truth (within 3 standard errors of the mean over 40 repeats) ...
    assert abs(lin.mean() - truth) < 3 * lin.std(ddof=1) / math.sqrt(40)
    assert abs(quad.mean() - truth) < 3 * quad.std(ddof=1) / math.sqrt(40)
    assert abs(quad.mean() - truth) < 0.1 * truth and abs(lin.mean() - truth) < 0.2 * truth
    # ... the linear one with a clearly larger spread (it uses n/2 disjoint quadruples instead of all pairs).
    assert lin.std() > 1.5 * quad.std()


def test_identical_distributions_give_about_zero_and_shift_increases_it():
    from hf_transfer.methods._layers import multi_gaussian_kernel, squared_distances

    unbiased, biased = [], []
    for seed in range(20):
        xs, xt = _gauss(200, 5, 0.0, seed=seed)
        bw = 10.0  # ~ the mean pairwise squared distance 2 * d for unit Gaussians
        unbiased.append(mmd2(xs, xt, bandwidth=bw).item())
        k = multi_gaussian_kernel(squared_distances(torch.cat([xs, xt]), torch.cat([xs, xt])), bw, MULTS)
        biased.append((k[:200, :200].mean() + k[200:, 200:].mean() - 2 * k[:200, 200:].mean()).item())
    unbiased, biased = np.array(unbiased), np.array(biased)
    # The U-statistic is centred on 0 for one distribution; the V-statistic is biased upwards by O(1/n).
    assert abs(unbiased.mean()) < 3 * unbiased.std(ddof=1) / math.sqrt(20)
    assert biased.mean() > 10 * abs(unbiased.mean())
    assert biased.min() > 0

    values = [mmd2(*_gauss(500, 5, delta, seed=4)).item() for delta in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert abs(values[0]) < 0.01 and values[2] > 0.05 and values[-1] > 0.5


def test_biased_statistic_differs_from_ours_by_the_diagonal(make_batch):
    """skada's dan_loss helper computes the biased V-statistic; with our kernel, V - U is the known diagonal term."""
    skada_losses = pytest.importorskip("skada.deep.losses", reason="needs skada's deep extra", exc_type=ImportError)
    from hf_transfer.methods._layers import multi_gaussian_kernel, squared_distances

    xs, xt = _gauss(7, 3, 0.5, seed=5)
    mults, bw = MULTS, 1.3

    def kernel(a, b):
        return multi_gaussian_kernel(squared_distances(a, b), bw, mults)

    v = skada_losses._maximum_mean_discrepancy(xs, xt, kernel=kernel).item()
    u = mmd2(xs, xt, bandwidth=bw).item()
    n, m = 7, len(mults)
    # mean over all n^2 entries = ((n^2 - n) * offdiag_mean + n * m) / n^2, with k(x, x) = m
    kss = kernel(xs, xs)
    ktt = kernel(xt, xt)

    def off_mean(k):
        return ((k.sum() - k.diagonal().sum()) / (n * n - n)).item()

    correction = (m - off_mean(kss)) / n + (m - off_mean(ktt)) / n
    assert v == pytest.approx(u + correction, rel=1e-6)


@pytest.mark.parametrize("ns,nt", [(0, 5), (5, 0), (1, 5), (5, 1), (1, 1)])
def test_too_few_rows_give_an_attached_zero(make_batch, ns, nt):
    batch = make_batch(ns, nt)
    for estimator in ("quadratic", "linear"):
        out = MMD(MMDConfig(estimator=estimator, joint=True), feature_dim=5, num_labels=3)(batch)
        assert out.loss.item() == 0.0 and out.loss.grad_fn is not None


def test_gradients_are_finite_with_duplicate_rows():
    features = torch.ones(6, 3, requires_grad=True)  # all distances 0: bandwidth must not divide by zero
    from hf_transfer.methods import StepBatch

    batch = StepBatch(torch.zeros(6, 2), features, torch.full((6,), -100), torch.tensor([0, 0, 0, 1, 1, 1]))
    out = MMD(MMDConfig(), feature_dim=3, num_labels=2)(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(features.grad).all()
