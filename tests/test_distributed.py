"""hf_transfer.distributed on 2 real gloo processes with uneven shards (3 and 5 rows): the gathered batch is the
whole batch in order, and the gradients each process gets (after DDP's average over processes) are exactly the
one-process gradients of the global loss."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_transfer.distributed import gather_step_batch, global_mean_scale, world_size
from hf_transfer.methods import StepBatch
from hf_transfer.methods.mmd import mmd2

SIZES = (3, 5)


def global_inputs():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    return {"features": torch.randn(n, 4, generator=g), "logits": torch.randn(n, 2, generator=g),
            "labels": torch.randint(0, 2, (n,), generator=g), "domain": torch.tensor([0, 1, 0, 1, 1, 0, 0, 1]),
            "sample_weight": torch.rand(n, generator=g) + 0.5}


def mmd_loss(batch: StepBatch) -> torch.Tensor:
    return mmd2(batch.features[batch.domain == 0], batch.features[batch.domain == 1], bandwidth=2.0)


def weighted_ce_share(logits, labels, weights) -> torch.Tensor:
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return (ce * weights).sum() * global_mean_scale(weights.sum())


def reference():
    x = global_inputs()
    features, logits = x["features"].requires_grad_(), x["logits"].requires_grad_()
    batch = StepBatch(logits, features, x["labels"], x["domain"], x["sample_weight"])
    mmd = mmd_loss(batch)
    mmd.backward()
    ce = torch.nn.functional.cross_entropy(logits, x["labels"], reduction="none")
    weighted = (ce * x["sample_weight"]).sum() / x["sample_weight"].sum()
    weighted.backward()
    return float(mmd.detach()), float(weighted.detach()), features.grad, logits.grad


def worker(rank: int, init_file: str, queue) -> None:
    # A forked child must not enter the OpenMP pool it inherited from a parent that used it (earlier tests): that
    # hangs. One intra-op thread runs every op inline; these tensors are tiny.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x = global_inputs()
        start = sum(SIZES[:rank])
        part = slice(start, start + SIZES[rank])
        features = x["features"][part].clone().requires_grad_()
        logits = x["logits"][part].clone().requires_grad_()
        batch = StepBatch(logits, features, x["labels"][part], x["domain"][part], x["sample_weight"][part])
        full = gather_step_batch(batch)
        mmd = mmd_loss(full)
        weighted = weighted_ce_share(logits, x["labels"][part], x["sample_weight"][part])
        (mmd + weighted).backward()
        # what DDP does to parameter gradients: average over the processes
        grads = [features.grad / world_size(), logits.grad / world_size()]
        share = weighted.detach().clone()
        dist.all_reduce(share)
        # As numpy arrays, which pickle by value: a tensor on a queue is sent as a shared-memory handle that this
        # process serves, and it may have exited by the time a busy parent reads the queue.
        queue.put((rank, {k: getattr(full, k).detach().numpy() for k in ("features", "labels", "domain",
                                                                          "sample_weight")},
                   float(mmd.detach()), float(share) / 2, [g.numpy() for g in grads]))
    finally:
        dist.destroy_process_group()


def test_global_batch_and_gradients_match_one_process(tmp_path):
    ctx = mp.get_context("fork")  # the workers inherit the imports: seconds, where spawn re-imports torch
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(rank, str(tmp_path / "init"), queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict((r[0], r[1:]) for r in (queue.get(timeout=100) for _ in procs))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    ref_mmd, ref_weighted, ref_feature_grad, ref_logit_grad = reference()
    x = global_inputs()
    for rank in range(2):
        gathered, mmd, weighted_mean, _ = results[rank]
        for key, value in gathered.items():
            # every row once, in rank order: none padded in
            torch.testing.assert_close(torch.from_numpy(value), x[key])
        assert mmd == pytest.approx(ref_mmd, rel=1e-6)
        assert weighted_mean == pytest.approx(ref_weighted, rel=1e-6)
    feature_grad = torch.cat([torch.from_numpy(results[r][3][0]) for r in range(2)])
    logit_grad = torch.cat([torch.from_numpy(results[r][3][1]) for r in range(2)])
    torch.testing.assert_close(feature_grad, ref_feature_grad)
    torch.testing.assert_close(logit_grad, ref_logit_grad)


def test_one_process_is_a_no_op():
    x = global_inputs()
    batch = StepBatch(x["logits"], x["features"], x["labels"], x["domain"])
    assert gather_step_batch(batch) is batch
    assert float(global_mean_scale(torch.tensor(4.0))) == 0.25
    assert os.environ.get("WORLD_SIZE") in (None, "1") and world_size() == 1


def test_exact_eval_loss_by_hand():
    import math

    import numpy as np

    from hf_transfer.trainer import exact_eval_loss

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    labels = np.array([0, 1, -100])  # the last row is unlabelled: left out
    by_hand = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert exact_eval_loss(logits, labels) == pytest.approx(by_hand, rel=1e-6)
    assert exact_eval_loss((logits, None), labels) == pytest.approx(by_hand, rel=1e-6)
    # not single-label classification: the Trainer's own loss stays
    assert exact_eval_loss(logits[:, :1], np.array([0.5, 1.5, 2.0], dtype=np.float32)) is None
    assert exact_eval_loss(logits, np.array([0, 2, 1])) is None  # a label outside the head
    assert exact_eval_loss(logits, np.array([-100, -100, -100])) is None
