"""KnowledgeGraph: building from triples files and taxonomies, queries, prune/merge, node-link persistence."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from hf_transfer.errors import DataError, UserError
from hf_transfer.relation import KnowledgeGraph, read_triples


def small() -> KnowledgeGraph:
    return KnowledgeGraph.from_triples([
        ("camera", "part_of", "electronics", 0.9),
        ("electronics", "related_to", "kitchen", 0.3),
        ("books", "related_to", "music", 0.6),
        ("music", "related_to", "dvd", 0.8),
        ("dvd", "related_to", "books", 0.5),
        ("camera", "related_to", "electronics", 0.4),
    ])


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_triples_files_round_trip(tmp_path, suffix):
    rows = [("a", "rel", "b", 0.5), ("b", "rel", "c", 2.0), ("a", "other", "c", 1.0)]
    path = tmp_path / f"t{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(dict(zip(("head", "relation", "tail", "weight"), r))) for r in rows))
    else:
        sep = "\t" if suffix == ".tsv" else ","
        # header in another column order, a comment line, a row without weight (defaults to 1)
        lines = [sep.join(["tail", "head", "relation", "weight"]), "# a comment"]
        lines += [sep.join([t, h, r, str(w)]) for h, r, t, w in rows[:2]] + [sep.join(["c", "a", "other", ""])]
        path.write_text("\n".join(lines) + "\n")
    kg = KnowledgeGraph.from_triples(path)
    assert sorted(kg.triples()) == sorted(rows)
    assert kg.relations() == ["other", "rel"]


def test_triples_without_header_and_errors(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("a\trel\tb\t0.5\nb\trel\tc\n")
    assert sorted(read_triples(path)) == [("a", "rel", "b", 0.5), ("b", "rel", "c", 1.0)]
    path.write_text("a\trel\tb\tnot-a-number\n")
    with pytest.raises(DataError, match="line 1: weight 'not-a-number'"):
        read_triples(path)
    path.write_text("a\trel\tb\t-1\n")
    with pytest.raises(DataError, match="weight must be a finite number > 0"):
        read_triples(path)
    with pytest.raises(DataError, match="unsupported extension"):
        read_triples(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("a") else None


def test_combine_duplicate_triples():
    kg = KnowledgeGraph()
    kg.add_triple("a", "r", "b", 0.5)
    kg.add_triple("a", "r", "b", 0.25)
    assert kg.triples() == [("a", "r", "b", 0.5)]
    kg.add_triple("a", "r", "b", 0.25, combine="sum")
    assert kg.triples() == [("a", "r", "b", 0.75)]
    kg.add_triple("a", "s", "b", 0.1)  # another relation on the same pair is its own edge
    assert kg.num_edges == 2


def test_taxonomy():
    kg = KnowledgeGraph.from_taxonomy(
        {"media": {"books": None, "music": ["cds", "vinyl"]}, "electronics": ["camera_photo"]}, root="products"
    )
    assert ("cds", "is_a", "music", 1.0) in kg.triples()
    assert ("media", "is_a", "products", 1.0) in kg.triples()
    assert kg.shortest_path("vinyl", "camera_photo") == ["vinyl", "music", "media", "products", "electronics",
                                                         "camera_photo"]
    assert kg.graph.nodes["books"]["kind"] == "category"
    with pytest.raises(DataError, match="under 'media'"):
        KnowledgeGraph.from_taxonomy({"media": 3})


def test_neighbours_and_paths():
    kg = small()
    assert kg.neighbours("electronics") == [("camera", "part_of", 0.9), ("camera", "related_to", 0.4),
                                            ("kitchen", "related_to", 0.3)]
    assert kg.neighbours("electronics", direction="out") == [("kitchen", "related_to", 0.3)]
    assert kg.neighbours("electronics", relation="part_of") == [("camera", "part_of", 0.9)]
    assert kg.neighbours("electronics", min_weight=0.35) == [("camera", "part_of", 0.9), ("camera", "related_to",
                                                                                          0.4)]
    # unweighted: books-dvd is one hop; weighted (length 1/w): books-music-dvd = 1/0.6 + 1/0.8 = 2.92 > 1/0.5 = 2
    assert kg.shortest_path("books", "dvd") == ["books", "dvd"]
    assert kg.shortest_path("books", "dvd", weighted=True) == ["books", "dvd"]
    kg.add_triple("books", "related_to", "music", 0.95)  # max-combined: now 1/0.95 + 1/0.8 = 2.30 > 2
    assert kg.shortest_path("books", "dvd", weighted=True) == ["books", "dvd"]
    kg.add_triple("music", "related_to", "dvd", 4.0)  # 1/0.95 + 1/4 = 1.30 < 2
    assert kg.shortest_path("books", "dvd", weighted=True) == ["books", "music", "dvd"]
    assert kg.shortest_path("books", "camera") is None
    assert kg.paths("books", "dvd") == [["books", "dvd"], ["books", "music", "dvd"]]
    assert kg.explain(["books", "music", "dvd"]) == [("books", "related_to", "music", 0.95),
                                                      ("music", "related_to", "dvd", 4.0)]
    with pytest.raises(UserError, match="'camra' is not a node of the graph; did you mean 'camera'"):
        kg.neighbours("camra")


def test_prune_and_merge():
    kg = small()
    pruned = kg.prune(0.5)
    assert sorted(pruned.triples()) == [("books", "related_to", "music", 0.6), ("camera", "part_of", "electronics",
                                                                                0.9),
                                        ("dvd", "related_to", "books", 0.5), ("music", "related_to", "dvd", 0.8)]
    assert "kitchen" not in pruned and "kitchen" in kg.prune(0.5, drop_isolated=False)
    other = KnowledgeGraph.from_triples([("books", "related_to", "music", 0.2), ("kitchen", "is_a", "home", 1.0)])
    other.add_node("home", kind="category")
    merged = kg.merge(other)
    assert ("books", "related_to", "music", 0.6) in merged.triples()
    assert ("kitchen", "is_a", "home", 1.0) in merged.triples()
    assert merged.graph.nodes["home"]["kind"] == "category"
    summed = kg.merge(other, combine="sum")
    assert ("books", "related_to", "music", pytest.approx(0.8)) in summed.triples()
    assert kg.num_edges == 6  # merge does not change its inputs


def test_adjacency_matches_networkx():
    kg = small()
    matrix, order = kg.adjacency()
    # the undirected simple view with the heaviest edge per pair, as networkx builds it
    ref = nx.to_numpy_array(kg.undirected(), nodelist=order, weight="weight")
    np.testing.assert_allclose(matrix.toarray(), ref)
    assert matrix[order.index("camera"), order.index("electronics")] == 0.9  # max of part_of 0.9, related_to 0.4
    sub, sub_order = kg.adjacency(["music", "books"])
    np.testing.assert_allclose(sub.toarray(), [[0, 0.6], [0.6, 0]])


def test_save_load_node_link(tmp_path):
    kg = small()
    kg.add_node("camera", kind="domain", label="Camera & Photo")
    path = kg.save(tmp_path / "g" / "graph.json")
    data = json.loads(path.read_text())
    assert data["format"].startswith("hf_transfer.relation") and "edges" in data
    assert not list((tmp_path / "g").glob("*.tmp"))  # the atomic write leaves no temporary file
    loaded = KnowledgeGraph.load(path)
    assert sorted(loaded.triples()) == sorted(kg.triples())
    assert loaded.graph.nodes["camera"] == {"kind": "domain", "label": "Camera & Photo"}
    # plain networkx node-link data loads too
    plain = nx.node_link_data(kg.graph, edges="edges")
    assert sorted(KnowledgeGraph.from_dict(plain).triples()) == sorted(kg.triples())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        KnowledgeGraph.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="does not exist"):
        KnowledgeGraph.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text(json.dumps({"nodes": []}))
    with pytest.raises(DataError, match="not a node-link graph"):
        KnowledgeGraph.load(tmp_path / "x.json")


def test_merge_inplace_invalidates_cached_views():
    kg = small()
    before = kg.adjacency()[0].nnz
    other = KnowledgeGraph.from_triples([("kitchen", "is_a", "home", 1.0)])
    assert kg.merge(other, inplace=True) is kg
    assert kg.adjacency()[0].nnz == before + 2  # the cached adjacency was rebuilt
    assert kg.shortest_path("home", "camera") == ["home", "kitchen", "electronics", "camera"]
