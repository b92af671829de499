"""Write a mixed source file for a target domain, ranked through a knowledge graph (docs/relation.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError


def main(argv: list[str] | None = None) -> None:
    """``python -m hf_transfer.relation``: rank sources for a target (or take a fixed list) and write the
    mixed source file. See recipes/relation/README.md."""
    import argparse

    from . import REVIEW_DOMAINS_GRAPH, KnowledgeGraph, RankedSource, mix_sources, rank_sources

    parser = argparse.ArgumentParser(prog="python -m hf_transfer.relation", description=main.__doc__)
    parser.add_argument("--graph", default="review_domains", help="node-link JSON, or review_domains (shipped)")
    parser.add_argument("--files", required=True, help="per-domain JSON Lines files, with {} for the domain name")
    parser.add_argument("--candidates", nargs="+", help="candidate source domains (with --target)")
    parser.add_argument("--target", help="rank --candidates for this target domain through the graph")
    parser.add_argument("--domains", nargs="+", help="instead of --target: these domains, equal shares")
    parser.add_argument("--k", type=int, default=None, help="keep the k best-ranked sources")
    parser.add_argument("--rows", type=int, default=None, help="rows in the mixed file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if (args.target is None) == (args.domains is None):
        parser.error("give either --target (with --candidates) or --domains")
    if args.target:
        kg = KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH if args.graph == "review_domains" else args.graph)
        # Default candidates: the graph's domains that have a data file.
        candidates = args.candidates or [n for n, d in kg.graph.nodes(data=True)
                                         if d.get("kind") == "domain" and Path(args.files.format(n)).is_file()]
        candidates = [c for c in candidates if c != args.target]
        ranked = rank_sources(kg, args.target, candidates, top_k=args.k)
    else:
        ranked = [RankedSource(d, d, 1.0, 1.0 / len(args.domains)) for d in args.domains]
    files = {r.name: args.files.format(r.name) for r in ranked}
    used = mix_sources(ranked, files, args.out, total_rows=args.rows, seed=args.seed)
    for r in ranked:
        print(f"{r.name}\tweight {r.weight:.3f}\tscore {r.score:.4g}\trows {used[r.name]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
