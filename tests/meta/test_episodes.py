"""Episodic sampler: shapes, disjoint support/query, seeded reproducibility, process sharding, clear errors."""

import numpy as np
import pytest

from hf_transfer.meta import EpisodeSampler, label_subset_tasks


def _labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_episode_is_n_way_k_shot_with_disjoint_query():
    labels = [_labels([10, 10, 10, 10, 3]), _labels([12, 12])]
    sampler = EpisodeSampler(labels, n_way=2, k_shot=3, n_query=4, seed=1)
    for ep in sampler.take(30):
        task_labels = labels[ep.task]
        assert ep.support.shape == (6,) and ep.query.shape == (8,)
        assert not set(ep.support) & set(ep.query)
        assert len(set(ep.classes)) == 2
        # episode label j is the class classes[j]
        assert (task_labels[ep.support] == ep.classes[ep.support_labels]).all()
        assert (task_labels[ep.query] == ep.classes[ep.query_labels]).all()
        assert np.bincount(ep.support_labels).tolist() == [3, 3]
        assert 4 not in ep.classes or ep.task != 0  # class 4 of task 0 has 3 < 3 + 4 rows: never drawn
    assert {ep.task for ep in sampler.take(30)} == {0, 1}


def test_seeded_and_order_free():
    labels = [_labels([20, 20, 20])]
    a = EpisodeSampler(labels, n_way=2, k_shot=2, n_query=3, seed=7)
    b = EpisodeSampler(labels, n_way=2, k_shot=2, n_query=3, seed=7)
    c = EpisodeSampler(labels, n_way=2, k_shot=2, n_query=3, seed=8)
    e5 = a.episode(5)
    b.take(4)
    assert np.array_equal(b.episode(5).support, e5.support) and np.array_equal(b.episode(5).query, e5.query)
    assert any(not np.array_equal(a.episode(i).support, c.episode(i).support) for i in range(5))
    # class order changes between episodes (labels are permuted per episode)
    assert len({tuple(ep.classes) for ep in a.take(20)}) > 1


def test_processes_get_distinct_episodes():
    sampler = EpisodeSampler([_labels([50, 50])], n_way=2, k_shot=2, n_query=2, seed=0)
    (r0,) = sampler.for_process(3, process_index=0, num_processes=2)
    (r1,) = sampler.for_process(3, process_index=1, num_processes=2)
    assert (r0.index, r1.index) == (6, 7)
    assert not np.array_equal(r0.support, r1.support)
    # one process with 2 episodes a step trains on the episodes 2 processes with 1 a step share
    assert [ep.index for ep in sampler.for_process(3, per_process=2)] == [6, 7]


def test_all_classes_and_separate_query_pool():
    support = [_labels([3, 3, 3])]
    query = [_labels([5, 5, 5])]
    sampler = EpisodeSampler(support, n_way=None, k_shot=3, n_query=5, query_labels=query, seed=0)
    ep = sampler.episode(0)
    assert ep.n_way == 3 and sorted(ep.classes) == [0, 1, 2]
    assert (query[0][ep.query] == ep.classes[ep.query_labels]).all()  # rows index the query pool


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="lower k_shot/n_query"):
        EpisodeSampler([_labels([4, 4])], n_way=2, k_shot=3, n_query=2)
    with pytest.raises(ValueError, match="n_way"):
        EpisodeSampler([_labels([9, 9]), _labels([9, 9, 9])], n_way=None, k_shot=2, n_query=2)


def test_label_subset_tasks():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    rows, task_labels = label_subset_tasks(labels, [[0, 1], [2, 3]])
    assert rows[0].tolist() == [0, 1, 4, 5] and task_labels[1].tolist() == [2, 3, 2, 3]
