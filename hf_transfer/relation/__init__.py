"""Relation-based transfer: knowledge graphs (networkx) that guide training on a target.

* :class:`KnowledgeGraph` — build (triples files, taxonomies, descriptions, extraction from data), save/load
  (node-link JSON), merge, prune, query neighbours and paths.
* :func:`link_names` — map labels / domains / entities onto graph nodes, with a :class:`LinkReport`.
* :func:`spectral_embedding`, :func:`random_walk_embedding` — node embeddings from the structure alone.
* :func:`relatedness`, :func:`label_adjacency`, :func:`laplacian_smoothness`, :func:`label_transfer_plan` — the
  numbers behind the ``label_relation`` and ``graph_laplacian`` methods.
* :func:`rank_sources`, :func:`mix_sources`, :func:`multitask_tasks` — graph-guided source selection and weighting.
* :class:`KnowledgeAugmenter` — knowledge-augmented inputs (linearised neighbour triples appended to the text).

See docs/relation.md.
"""

from pathlib import Path as _Path

from .augment import KnowledgeAugmenter, linearise
from .embed import random_walk_embedding, spectral_eigenvalues, spectral_embedding
from .extract import graph_from_descriptions, graph_from_texts, salient_terms, tokenize
from .graph import KnowledgeGraph, read_triples
from .linking import Link, LinkReport, encoder_embedder, link_names, normalise
from .sources import RankedSource, mix_sources, multitask_tasks, rank_sources
from .transfer import (
    TransferPlan,
    apply_transfer_plan,
    label_adjacency,
    label_transfer_plan,
    laplacian,
    laplacian_smoothness,
    personalized_pagerank,
    relatedness,
)

#: The example graph of the review domains shipped with the package (see docs/relation.md).
REVIEW_DOMAINS_GRAPH = str(_Path(__file__).resolve().parents[1] / "resources" / "review_domains_graph.json")

__all__ = [
    "REVIEW_DOMAINS_GRAPH",
    "KnowledgeAugmenter",
    "KnowledgeGraph",
    "Link",
    "LinkReport",
    "RankedSource",
    "TransferPlan",
    "apply_transfer_plan",
    "encoder_embedder",
    "graph_from_descriptions",
    "graph_from_texts",
    "label_adjacency",
    "label_transfer_plan",
    "laplacian",
    "laplacian_smoothness",
    "linearise",
    "link_names",
    "mix_sources",
    "multitask_tasks",
    "normalise",
    "personalized_pagerank",
    "random_walk_embedding",
    "rank_sources",
    "read_triples",
    "relatedness",
    "salient_terms",
    "spectral_eigenvalues",
    "spectral_embedding",
    "tokenize",
]
