"""Relatedness, Laplacian smoothness, label transfer plans, linking and source ranking against hand computations."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch

from hf_transfer.errors import UserError
from hf_transfer.relation import (
    REVIEW_DOMAINS_GRAPH,
    KnowledgeGraph,
    apply_transfer_plan,
    label_adjacency,
    label_transfer_plan,
    laplacian,
    laplacian_smoothness,
    link_names,
    mix_sources,
    multitask_tasks,
    normalise,
    rank_sources,
    relatedness,
)


def chain() -> KnowledgeGraph:
    # a -1- b -2- c,   b -1- d
    return KnowledgeGraph.from_triples([("a", "r", "b", 1.0), ("b", "r", "c", 2.0), ("d", "r", "b", 1.0)])


def test_relatedness_by_hand():
    kg = chain()
    # P = D^-1 A: from a -> b (1); from b -> a 1/4, c 2/4, d 1/4; from c -> b; from d -> b
    r1 = relatedness(kg, ["a"], ["b", "c", "d"], hops=1)
    np.testing.assert_allclose(r1, [[1.0, 0.0, 0.0]])
    r2 = relatedness(kg, ["a", "c"], ["a", "c", "d"], hops=2, decay=0.5)
    # a: hop1 b; hop2 (a->b->x) = [1/4, 2/4, 1/4] weighted 0.5
    np.testing.assert_allclose(r2[0], [0.125, 0.25, 0.125])
    np.testing.assert_allclose(r2[1], [0.125, 0.25, 0.125])
    with pytest.raises(UserError, match="hops"):
        relatedness(kg, ["a"], ["b"], hops=0)


def test_laplacian_smoothness_equals_pairwise_sum():
    torch.manual_seed(0)
    w = torch.randn(4, 5, dtype=torch.float64)
    a = torch.tensor([[0, 1.0, 0.5, 0], [1.0, 0, 0, 2.0], [0.5, 0, 0, 0], [0, 2.0, 0, 0]], dtype=torch.float64)
    pairwise = sum(a[i, j] * ((w[i] - w[j]) ** 2).sum() for i in range(4) for j in range(i + 1, 4))
    assert laplacian_smoothness(w, a).item() == pytest.approx(pairwise.item())
    lap = laplacian(a)
    np.testing.assert_allclose(lap.numpy(), np.diag(a.sum(1).numpy()) - a.numpy())
    # normalised Laplacian agrees with networkx's
    g = nx.from_numpy_array(a.numpy())
    np.testing.assert_allclose(laplacian(a, normalized=True).numpy(),
                               nx.normalized_laplacian_matrix(g, weight="weight").toarray(), atol=1e-12)
    d = a.sum(1)
    normalised_pairs = sum(a[i, j] * ((w[i] / d[i].sqrt() - w[j] / d[j].sqrt()) ** 2).sum()
                           for i in range(4) for j in range(i + 1, 4))
    assert laplacian_smoothness(w, a, normalized=True).item() == pytest.approx(normalised_pairs.item())


def test_label_adjacency():
    kg = chain()
    np.testing.assert_allclose(label_adjacency(kg, ["a", "b", "c"]), [[0, 1, 0], [1, 0, 2], [0, 2, 0]])
    two = label_adjacency(kg, ["a", "c"], hops=2, decay=0.5)
    # a and c share only b: R[a, c] = 0.5 * 1 * 2/4 = 0.25, R[c, a] = 0.5 * 1 * 1/4 = 0.125 -> mean 0.1875
    np.testing.assert_allclose(two, [[0, 0.1875], [0.1875, 0]])
    same = label_adjacency(kg, ["a", "a", "c"])
    np.testing.assert_allclose(same, [[0, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_label_transfer_plan_and_apply():
    kg = chain()
    plan = label_transfer_plan(kg, ["c", "a", None, "b"], ["b", "d", "x_unlinked"][:2] + [None],
                               target_names=["C", "A", "Z", "B"], source_names=["B", "D", "Q"], hops=2, decay=0.5)
    # C: hop1 -> b (1); hop2 -> c->b->d 0.5*1/4 -> scores b 1, d 0.125 -> [8/9, 1/9]
    np.testing.assert_allclose(plan.matrix[0], [8 / 9, 1 / 9, 0])
    np.testing.assert_allclose(plan.matrix[1], [8 / 9, 1 / 9, 0])
    np.testing.assert_allclose(plan.matrix[2], [0, 0, 0])
    np.testing.assert_allclose(plan.matrix[3], [1, 0, 0])
    assert plan.how == ["neighbours", "neighbours", "none", "same"]
    assert plan.sources[0] == [("B", pytest.approx(8 / 9)), ("D", pytest.approx(1 / 9))]
    json.dumps(plan.to_dict())

    torch.manual_seed(0)
    source = torch.nn.Linear(6, 3)
    target = torch.nn.Linear(6, 4)
    fresh_row = target.weight[2].clone()
    assert apply_transfer_plan(target, source.weight.detach(), source.bias.detach(), plan) == 3
    expected = 8 / 9 * source.weight[0] + 1 / 9 * source.weight[1]
    torch.testing.assert_close(target.weight[0], expected)
    torch.testing.assert_close(target.bias[3], source.bias[0])
    torch.testing.assert_close(target.weight[2], fresh_row)  # unlinked class keeps its fresh initialisation
    plan2 = label_transfer_plan(kg, ["c"], ["b", "d"], min_weight=0.2)
    np.testing.assert_allclose(plan2.matrix, [[1.0, 0.0]])
    with pytest.raises(UserError, match="reads 6 features"):
        apply_transfer_plan(torch.nn.Linear(5, 4), source.weight.detach(), None, plan)


def test_normalise_and_linking():
    assert normalise("Kitchen_&_Housewares") == normalise("kitchen housewares") == "kitchen houseware"
    assert normalise("Camera & Photo") == normalise("camera_photo") == "camera photo"
    kg = KnowledgeGraph.from_triples([("camera_photo", "r", "electronics"), ("music", "r", "dvd")])
    kg.add_node("dvd", label="Movies & TV", aliases=["video"])
    kg.add_node("music", kind="domain")
    report = link_names(["music", "Camera & Photo", "Videos", "movies and tv", "gardening"], kg)
    assert report.mapping == {"music": "music", "Camera & Photo": "camera_photo", "Videos": "dvd",
                              "movies and tv": "dvd", "gardening": None}
    assert report.counts() == {"exact": 1, "normalised": 3, "embedding": 0, "unlinked": 1}
    assert report.unlinked == ["gardening"]
    assert "| gardening | — | unlinked |" in report.to_markdown()
    assert link_names(["dvd"], kg, kinds=["domain"]).mapping == {"dvd": None}

    # embedding links with a fake encoder: "garden" is closest to "electronics" here by construction
    def embed(texts):
        table = {"gardening": [1, 0.1], "electronics": [1, 0], "music": [0, 1]}
        return np.array([table.get(t, [0.0, -1.0]) for t in texts], dtype=float)

    report = link_names(["gardening"], kg, embed=embed, threshold=0.9)
    assert report.links[0].node == "electronics" and report.links[0].how == "embedding"
    assert report.links[0].score == pytest.approx(1 / np.sqrt(1.01))
    assert link_names(["gardening"], kg, embed=embed, threshold=0.999).unlinked == ["gardening"]


def test_rank_sources_on_shipped_graph(tmp_path):
    kg = KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH)
    domains = ["books", "dvd", "electronics", "kitchen_housewares", "apparel", "health_personal_care", "music"]
    ranked = rank_sources(kg, "camera_photo", domains, top_k=3)
    assert ranked[0].name == "electronics"
    assert sum(r.weight for r in ranked) == pytest.approx(1.0)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    walk = rank_sources(kg, "music", domains, score="walk")
    assert walk[0].name in ("dvd", "books")
    flat = rank_sources(kg, "camera_photo", domains, top_k=3, temperature=100.0)
    assert max(r.weight for r in flat) - min(r.weight for r in flat) < 0.05
    with pytest.raises(UserError, match="links to no node"):
        rank_sources(kg, "gardening_tools", domains)

    files = {}
    for name in ("a", "b"):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"text": f"{name}{i}", "label": i % 2}) + "\n" for i in range(10)))
    from hf_transfer.relation import RankedSource

    picked = [RankedSource("a", "a", 0.3, 0.75), RankedSource("b", "b", 0.1, 0.25)]
    used = mix_sources(picked, files, tmp_path / "mix.jsonl", total_rows=8, seed=0)
    assert used == {"a": 6, "b": 2}
    rows = [json.loads(line) for line in (tmp_path / "mix.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sum(r["source_domain"] == "a" for r in rows) == 6
    assert len({r["text"] for r in rows}) == 8  # without replacement
    tasks = multitask_tasks(picked, {k: str(v) for k, v in files.items()})
    assert [t["loss_weight"] for t in tasks] == [1.5, 0.5]


def test_personalized_pagerank_matches_networkx():
    from hf_transfer.relation import personalized_pagerank

    kg = KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH)
    kg.add_node("isolated")  # a dangling node
    ours = personalized_pagerank(kg, {"camera_photo": 1.0, "music": 0.5}, alpha=0.85, tol=1e-10, max_iter=1000)
    ref = nx.pagerank(kg.undirected(), alpha=0.85, personalization={"camera_photo": 1.0, "music": 0.5},
                      weight="weight", tol=1e-10, max_iter=1000)
    for node, value in ref.items():
        assert ours[node] == pytest.approx(value, abs=1e-8)
    with pytest.raises(UserError, match="seeds"):
        personalized_pagerank(kg, {"camera_photo": 0.0})
