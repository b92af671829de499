"""Scale check of :class:`hf_transfer.relation.KnowledgeGraph`: build and query a 100k-node / 1M-edge graph.

A seeded random graph (``--nodes`` nodes, ``--edges`` triples over 5 relations, weights uniform in [0.05, 1]) is
built from triples, then every operation relation-based transfer uses is timed once (queries: the mean over
``--queries`` random nodes or pairs). Cached views (the undirected graph, the adjacency matrix) are built by the first
query that needs them; the table says which row pays for that.

    nice -n 15 .venv/bin/python benchmarks/relation_scale.py
    nice -n 15 .venv/bin/python benchmarks/relation_scale.py --nodes 10000 --edges 100000 --out /tmp/scale.md
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._machine import machine_header, markdown_table  # noqa: E402


def timed(rows: list, name: str, fn, *, per: int = 1, note: str = ""):
    start = time.perf_counter()
    out = fn()
    seconds = (time.perf_counter() - start) / per
    rows.append([name, f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s", note])
    print(rows[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--spectral_dim", type=int, default=8, help="0 skips the spectral embedding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "relation_scale.md"))
    args = parser.parse_args()

    from hf_transfer.relation import KnowledgeGraph, rank_sources, relatedness, spectral_embedding

    rng = np.random.default_rng(args.seed)
    heads = rng.integers(0, args.nodes, args.edges)
    tails = rng.integers(0, args.nodes, args.edges)
    relations = rng.integers(0, 5, args.edges)
    weights = rng.uniform(0.05, 1.0, args.edges)
    triples = [(f"n{h}", f"r{r}", f"n{t}", float(w)) for h, r, t, w in zip(heads, relations, tails, weights)]
    rows: list = []
    kg = timed(rows, f"build from {len(triples):,} triples", lambda: KnowledgeGraph.from_triples(triples))
    note = f"{kg.num_nodes:,} nodes, {kg.num_edges:,} edges"
    rows[-1][2] = note
    nodes = [f"n{i}" for i in rng.integers(0, args.nodes, args.queries)]
    pairs = list(zip(nodes, nodes[::-1]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.json"
        timed(rows, "save (node-link JSON, atomic)", lambda: kg.save(path))
        size = path.stat().st_size / 1e6
        rows[-1][2] = f"{size:.0f} MB"
        timed(rows, "load", lambda: KnowledgeGraph.load(path))
    timed(rows, "neighbours(node), per query", lambda: [kg.neighbours(n) for n in nodes], per=len(nodes))
    timed(rows, "undirected view (first query builds it, cached)", kg.undirected)
    timed(rows, "shortest_path(a, b), per query", lambda: [kg.shortest_path(a, b) for a, b in pairs], per=len(pairs))
    timed(rows, "shortest_path(a, b, weighted=True), per query",
          lambda: [kg.shortest_path(a, b, weighted=True) for a, b in pairs[:10]], per=10)
    timed(rows, "adjacency matrix (built once, cached)", kg.adjacency)
    timed(rows, "relatedness, 10 rows x 1,000 columns, hops 2", lambda: relatedness(kg, nodes[:10], nodes[:1000]))
    timed(rows, "rank_sources (personalised PageRank), 20 candidates",
          lambda: rank_sources(kg, nodes[0], nodes[1:21]))
    timed(rows, "prune(min_weight=0.5)", lambda: kg.prune(0.5))
    small = KnowledgeGraph.from_triples([(h, r, t, w / 2) for h, r, t, w in triples[:10_000]])
    timed(rows, "merge with a 10k-triple graph (into a copy)", lambda: kg.merge(small))
    timed(rows, "merge with a 10k-triple graph (inplace=True)", lambda: kg.merge(small, inplace=True))
    if args.spectral_dim:
        timed(rows, f"spectral_embedding(dim={args.spectral_dim}) (scipy eigsh)",
              lambda: spectral_embedding(kg, args.spectral_dim))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    text = "\n".join([
        "# KnowledgeGraph at scale", "",
        machine_header({"graph": f"random, {args.nodes:,} nodes, {args.edges:,} triples, 5 relations, seed "
                                 f"{args.seed}", "peak memory (max RSS)": f"{peak:.1f} GB"}), "",
        markdown_table(["operation", "time", "note"], rows, align="lrl"), "",
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
