"""Draw a (small) knowledge graph to a PNG with matplotlib (the ``plots`` extra). Main process only in a
distributed run; nothing in training depends on it."""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from .graph import KnowledgeGraph

KIND_COLOURS = {"domain": "#4C72B0", "category": "#DD8452", "aspect": "#55A868", "term": "#8172B3",
                "label": "#C44E52"}


def draw_graph(
    kg: KnowledgeGraph, path: str | os.PathLike, *, title: str | None = None, seed: int = 0,
    figsize: tuple[float, float] = (11, 8), dpi: int = 120,
) -> Path:
    """Write a PNG: nodes coloured by their ``kind``, labelled by ``label`` (else name), edge width by weight,
    edge style by relation. Layout: networkx's spring layout, seeded, so the picture is reproducible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    view = kg.undirected()
    pos = nx.spring_layout(view, seed=seed, weight="weight", k=1.2 / max(1, len(view)) ** 0.5, iterations=200)
    fig, ax = plt.subplots(figsize=figsize)
    relations = kg.relations()
    styles = ["solid", "dashed", "dotted", "dashdot"]
    for i, relation in enumerate(relations):
        edges = [(h, t) for h, r, t, _ in kg.triples() if r == relation and h != t]
        widths = [0.5 + 2.5 * kg.graph[h][t][relation]["weight"] for h, t in edges]
        nx.draw_networkx_edges(view, pos, edgelist=edges, width=widths, style=styles[i % len(styles)],
                               alpha=0.45, ax=ax)
    kinds = [kg.graph.nodes[n].get("kind", "node") for n in view]
    colours = [KIND_COLOURS.get(k, "#999999") for k in kinds]
    nx.draw_networkx_nodes(view, pos, node_color=colours, node_size=[700 if k == "domain" else 420 for k in kinds],
                           alpha=0.9, ax=ax)
    labels = {n: kg.graph.nodes[n].get("label") or n for n in view}
    nx.draw_networkx_labels(view, pos, labels=labels, font_size=8, ax=ax)
    handles = [Line2D([0], [0], marker="o", color="w", markerfacecolor=c, markersize=10, label=k)
               for k, c in KIND_COLOURS.items() if k in kinds]
    handles += [Line2D([0], [0], color="grey", linestyle=styles[i % len(styles)], label=r)
                for i, r in enumerate(relations)]
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
