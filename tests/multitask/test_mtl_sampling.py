"""Task sampling: probabilities against their closed forms, schedules, and the per-process row shards."""

from __future__ import annotations

import numpy as np
import pytest

from hf_transfer.multitask.sampling import TaskBatchSampler, task_probabilities, task_schedule

SIZES = [1000, 250, 40]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_temperature_probabilities_closed_form(temperature):
    n = np.array(SIZES, dtype=float)
    expected = n ** (1 / temperature) / (n ** (1 / temperature)).sum()
    np.testing.assert_allclose(task_probabilities(SIZES, "temperature", temperature), expected, rtol=1e-12)
    # T = 2 by hand: sqrt(1000), sqrt(250), sqrt(40) normalised
    if temperature == 2.0:
        roots = [31.6227766, 15.8113883, 6.32455532]
        np.testing.assert_allclose(task_probabilities(SIZES, "temperature", 2.0), np.array(roots) / sum(roots),
                                   rtol=1e-7)


def test_proportional_uniform_limits():
    np.testing.assert_allclose(task_probabilities(SIZES, "proportional"), [1000 / 1290, 250 / 1290, 40 / 1290])
    np.testing.assert_allclose(task_probabilities(SIZES, "temperature", 1.0), task_probabilities(SIZES))
    np.testing.assert_allclose(task_probabilities(SIZES, "temperature", 1e6), [1 / 3] * 3, atol=1e-5)
    np.testing.assert_allclose(task_probabilities(SIZES, "round_robin"), [1 / 3] * 3)
    with pytest.raises(ValueError, match="positive"):
        task_probabilities([10, 0])
    with pytest.raises(ValueError, match="unknown task sampling"):
        task_probabilities(SIZES, "uniformly")


@pytest.mark.parametrize("strategy,temperature", [("proportional", 1.0), ("temperature", 3.0)])
def test_schedule_frequencies_match_the_probabilities(strategy, temperature):
    steps = 40_000
    schedule = task_schedule(SIZES, steps, strategy=strategy, temperature=temperature, seed=3)
    freq = np.bincount(schedule, minlength=3) / steps
    p = task_probabilities(SIZES, strategy, temperature)
    sigma = np.sqrt(p * (1 - p) / steps)
    assert np.all(np.abs(freq - p) < 5 * sigma), (freq, p)
    # a pure function of (seed, epoch): every process computes the same schedule
    np.testing.assert_array_equal(schedule, task_schedule(SIZES, steps, strategy=strategy, temperature=temperature,
                                                          seed=3))
    assert not np.array_equal(schedule[:200], task_schedule(SIZES, steps, strategy=strategy,
                                                            temperature=temperature, seed=3, epoch=1)[:200])


def test_round_robin_order_continues_across_epochs():
    np.testing.assert_array_equal(task_schedule(SIZES, 7, strategy="round_robin"), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(task_schedule(SIZES, 7, strategy="round_robin", epoch=1), [1, 2, 0, 1, 2, 0, 1])


def task_of(rows, offsets, sizes):
    tasks = {int(np.searchsorted(offsets, r, side="right") - 1) for r in rows}
    assert len(tasks) == 1, f"a batch mixes tasks {tasks}"
    (task,) = tasks
    assert all(offsets[task] <= r < offsets[task] + sizes[task] for r in rows)
    return task


@pytest.mark.parametrize("strategy", ["proportional", "temperature", "round_robin"])
def test_two_processes_draw_the_same_task_and_disjoint_rows(strategy):
    sizes, batch = [30, 12, 7], 4
    samplers = [TaskBatchSampler(sizes, batch_size=batch, num_processes=2, process_index=r, strategy=strategy,
                                 temperature=2.0, seed=11) for r in (0, 1)]
    offsets = samplers[0].offsets
    assert len(samplers[0]) == 4 + 2 + 1  # ceil(30/8) + ceil(12/8) + ceil(7/8) steps an epoch
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        batches = [list(s) for s in samplers]
        schedule = samplers[0].schedule()
        assert len(batches[0]) == len(batches[1]) == len(schedule)
        for step, (b0, b1) in enumerate(zip(*batches)):
            assert len(b0) == len(b1) == batch
            assert task_of(b0, offsets, sizes) == task_of(b1, offsets, sizes) == schedule[step]
            if sizes[schedule[step]] >= 2 * batch:
                assert not set(b0) & set(b1)  # each process its own rows of the step


def test_rows_of_a_task_are_a_permutation_before_repeating():
    sampler = TaskBatchSampler([10, 10], batch_size=5, strategy="round_robin", seed=0)
    batches = list(sampler)
    first_task_rows = [r for b in batches if b[0] < 10 for r in b]
    assert sorted(first_task_rows[:10]) == list(range(10))
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a fresh order each epoch
    assert TaskBatchSampler([10, 10], batch_size=5, strategy="round_robin", seed=0).__iter__().__next__() == \
        batches[0]


def test_global_task_ids_are_reported():
    sampler = TaskBatchSampler([5, 5], batch_size=2, strategy="round_robin", task_ids=[3, 1])
    assert sampler.schedule().tolist()[:4] == [3, 1, 3, 1]
