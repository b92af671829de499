"""The shipped relation recipes parse, the source-mixing command line works, the graph draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_transfer.recipe import load_recipe
from hf_transfer.relation import REVIEW_DOMAINS_GRAPH, KnowledgeGraph
from hf_transfer.relation.__main__ import main

from ..conftest import REPO, write_jsonl


@pytest.mark.parametrize("name", ["graph_sources", "domain_source", "label_relation"])
def test_recipes_parse(name):
    recipe = load_recipe(REPO / "recipes" / "relation" / f"{name}.yaml")
    if name == "label_relation":
        assert recipe.methods.method == ["label_relation", "graph_laplacian"]
        assert recipe.method_configs["graph_laplacian"].apply_to == "classifier"


def test_shipped_graph_covers_the_data_domains():
    kg = KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH)
    domains = {n for n, d in kg.graph.nodes(data=True) if d.get("kind") == "domain"}
    data = REPO.parent / "shared" / "data" / "fdu_mtl"
    names = {p.name.split(".")[0] for p in data.glob("*.train.jsonl")} if data.is_dir() else set()
    assert names <= domains
    assert {"books", "dvd", "electronics", "kitchen_housewares", "camera_photo", "music", "apparel"} <= domains


def test_command_line_mixes_ranked_sources(tmp_path, capsys):
    for d in ("electronics", "dvd", "books", "camera_photo"):
        write_jsonl(tmp_path / f"{d}.jsonl", [{"text": f"{d} {i}", "label": i % 2} for i in range(20)])
    out = tmp_path / "mix.jsonl"
    main(["--target", "camera_photo", "--k", "2", "--rows", "10", "--files", str(tmp_path / "{}.jsonl"),
          "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("electronics\t")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and {r["source_domain"] for r in rows} <= {"electronics", "dvd", "books"}
    main(["--domains", "books", "dvd", "--rows", "6", "--files", str(tmp_path / "{}.jsonl"), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source_domain"] for r in rows) == ["books"] * 3 + ["dvd"] * 3


def test_draw_graph(tmp_path):
    pytest.importorskip("matplotlib")
    from hf_transfer.relation.plot import draw_graph

    path = draw_graph(KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH), tmp_path / "g.png", dpi=40)
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_knowledge_augmenter():
    from hf_transfer.relation import KnowledgeAugmenter, linearise

    kg = KnowledgeGraph.from_triples([("camera_photo", "related_to", "electronics", 0.9),
                                      ("camera_photo", "has_aspect", "battery_life", 0.8),
                                      ("electronics", "has_aspect", "battery_life", 0.7)])
    kg.add_node("camera_photo", aliases=["camera"])
    assert linearise(kg, "battery_life", max_triples=1) == ["camera photo has aspect battery life"]
    augment = KnowledgeAugmenter(kg, max_nodes=1, max_triples=2)
    assert augment.mentions("Battery life of this Camera") == ["battery_life", "camera_photo"]
    assert augment("Battery life of this Camera") == (
        "Battery life of this Camera | camera photo has aspect battery life; electronics has aspect battery life")
    assert augment("no graph words") == "no graph words"
