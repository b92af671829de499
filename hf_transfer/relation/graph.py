"""``KnowledgeGraph``: a weighted graph with typed edges on networkx, and the I/O and queries transfer needs.

Storage is an ``nx.MultiDiGraph`` whose edges are keyed by their relation (``head -[relation]-> tail``) and carry a
``weight`` (default 1.0), so the same pair of nodes can be linked by several relations and one triple added twice
keeps one edge (its weights combined by ``max`` or ``sum``). Nodes carry free attributes (``kind``: ``"domain"``,
``"label"``, ``"term"`` ...; ``label``: a display name).

For numeric work (embeddings, Laplacians, random walks) the graph is read as *undirected and simple*: the weight
between two nodes is the largest weight of any edge between them, in either direction (:meth:`adjacency`). This is
the convention of every function in :mod:`hf_transfer.relation`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from ..errors import DataError, UserError, did_you_mean

FORMAT = "hf_transfer.relation.KnowledgeGraph/1"
COMBINE = ("max", "sum")
DIRECTIONS = ("both", "out", "in")
TRIPLE_FIELDS = ("head", "relation", "tail", "weight")


class KnowledgeGraph:
    """A knowledge graph of ``(head, relation, tail, weight)`` triples.

    Args:
        graph: an existing ``nx.MultiDiGraph`` to wrap (edge keys are relations, ``weight`` attributes weights),
            or ``None`` for an empty graph.
    """

    def __init__(self, graph: nx.MultiDiGraph | None = None):
        if graph is None:
            graph = nx.MultiDiGraph()
        if not isinstance(graph, nx.MultiDiGraph):
            raise TypeError(f"KnowledgeGraph wraps an nx.MultiDiGraph, got {type(graph).__name__}")
        self.graph = graph
        # The undirected view and the adjacency matrix cost a pass over every edge; on a large graph that pass
        # dominates each query, so they are kept until the graph changes through this class (or invalidate()).
        self._cache: dict[str, Any] = {}

    def invalidate(self) -> None:
        """Drop cached views; call it after changing ``self.graph`` directly (the methods here do it themselves)."""
        self._cache.clear()

    # ---- building ----------------------------------------------------------------------------------------------

    def add_node(self, node: str, **attrs: Any) -> None:
        """Add a node (or update its attributes)."""
        self._cache.clear()
        self.graph.add_node(str(node), **attrs)

    def add_triple(
        self, head: str, relation: str, tail: str, weight: float = 1.0, *, combine: str = "max"
    ) -> None:
        """Add ``head -[relation]-> tail``. A triple that exists already keeps one edge, its weight combined."""
        _check_choice("combine", combine, COMBINE)
        weight = _check_weight(weight, where=f"triple ({head!r}, {relation!r}, {tail!r})")
        head, tail, relation = str(head), str(tail), str(relation)
        data = self.graph.get_edge_data(head, tail, key=relation)
        if data is not None:
            weight = max(data["weight"], weight) if combine == "max" else data["weight"] + weight
        self._cache.clear()
        self.graph.add_edge(head, tail, key=relation, weight=weight)

    def add_triples(self, triples: Iterable[tuple], *, combine: str = "max") -> None:
        """Add many ``(head, relation, tail[, weight])`` tuples (same rules as :meth:`add_triple`, in bulk)."""
        _check_choice("combine", combine, COMBINE)
        # Combine duplicates in a dict first, then one add_edges_from: several times faster than edge-by-edge.
        pending: dict[tuple[str, str, str], float] = {}
        for triple in triples:
            if len(triple) not in (3, 4):
                raise DataError(f"triple {triple!r}: expected (head, relation, tail[, weight])")
            head, relation, tail = str(triple[0]), str(triple[1]), str(triple[2])
            weight = triple[3] if len(triple) == 4 else 1.0
            if type(weight) is not float or not 0 < weight < float("inf"):
                weight = _check_weight(weight, where=f"triple ({head!r}, {relation!r}, {tail!r})")
            key = (head, tail, relation)
            old = pending.get(key)
            if old is not None:
                weight = max(old, weight) if combine == "max" else old + weight
            pending[key] = weight
        edges = []
        for (head, tail, relation), weight in pending.items():
            data = self.graph.get_edge_data(head, tail, key=relation) if head in self.graph else None
            if data is not None:
                weight = max(data["weight"], weight) if combine == "max" else data["weight"] + weight
            edges.append((head, tail, relation, {"weight": weight}))
        self._cache.clear()
        self.graph.add_edges_from(edges)

    @classmethod
    def from_triples(cls, source: str | os.PathLike | Iterable[tuple], *, combine: str = "max") -> KnowledgeGraph:
        """Build from triples: an iterable of tuples, or a ``.tsv`` / ``.csv`` / ``.jsonl`` file.

        Files hold ``head, relation, tail`` and optionally ``weight``. TSV/CSV may start with a header row naming
        those columns (any order; detected when its first three cells are ``head, relation, tail``); without one
        the columns are in that order. JSON Lines rows are objects with those keys. Blank lines and lines starting
        with ``#`` are skipped.
        """
        kg = cls()
        if isinstance(source, (str, os.PathLike)):
            kg.add_triples(read_triples(source), combine=combine)
        else:
            kg.add_triples(source, combine=combine)
        return kg

    @classmethod
    def from_taxonomy(
        cls, taxonomy: Mapping[str, Any] | Iterable[Any], *, relation: str = "is_a", root: str | None = None,
        weight: float = 1.0, kind: str | None = "category",
    ) -> KnowledgeGraph:
        """Build from a label taxonomy: ``child -[is_a]-> parent`` for every nesting level.

        ``taxonomy`` is a nested mapping ``{parent: {child: {...}, leaf: None}}`` whose leaves are ``None``, an empty
        mapping or a list of names (``{"electronics": ["camera_photo", "computers"]}``). ``root``, when given, is
        the parent of the top-level keys.
        """
        kg = cls()

        def walk(parent: str | None, children: Any) -> None:
            if children is None:
                return
            if isinstance(children, Mapping):
                items = list(children.items())
            elif isinstance(children, (list, tuple)):
                items = [(c, None) for c in children]
            else:
                raise DataError(f"taxonomy: under {parent!r} expected a mapping or a list, got {children!r}")
            for child, grandchildren in items:
                child = str(child)
                kg.add_node(child, **({"kind": kind} if kind else {}))
                if parent is not None:
                    kg.add_triple(child, relation, parent, weight)
                walk(child, grandchildren)

        if root is not None:
            kg.add_node(root, **({"kind": kind} if kind else {}))
        walk(root, taxonomy)
        return kg

    # ---- inspection ----------------------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return list(self.graph.nodes)

    @property
    def num_nodes(self) -> int:
        return self.graph.number_of_nodes()

    @property
    def num_edges(self) -> int:
        return self.graph.number_of_edges()

    def __contains__(self, node: object) -> bool:
        return node in self.graph

    def __len__(self) -> int:
        return self.num_nodes

    def __repr__(self) -> str:
        return f"KnowledgeGraph({self.num_nodes} nodes, {self.num_edges} edges, relations {self.relations()})"

    def relations(self) -> list[str]:
        return sorted({key for _, _, key in self.graph.edges(keys=True)})

    def triples(self) -> list[tuple[str, str, str, float]]:
        """Every edge as ``(head, relation, tail, weight)``."""
        return [(h, k, t, float(d["weight"])) for h, t, k, d in self.graph.edges(keys=True, data=True)]

    def require(self, node: str, *, field: str = "node") -> None:
        """Raise a :class:`UserError` naming ``field`` when ``node`` is not in the graph."""
        if node not in self.graph:
            raise UserError(f"{field}: {node!r} is not a node of the graph{did_you_mean(str(node), self.nodes)}")

    # ---- queries -------------------------------------------------------------------------------------------------

    def neighbours(
        self, node: str, *, relation: str | None = None, direction: str = "both", min_weight: float = 0.0
    ) -> list[tuple[str, str, float]]:
        """``(neighbour, relation, weight)`` of the edges at ``node``, strongest first (ties by name).

        Args:
            relation: keep only edges of this relation.
            direction: ``"out"`` (``node`` is the head), ``"in"`` (the tail) or ``"both"``.
            min_weight: keep only edges at least this heavy.
        """
        self.require(node)
        _check_choice("direction", direction, DIRECTIONS)
        found: list[tuple[str, str, float]] = []
        if direction in ("both", "out"):
            found += [(t, k, d["weight"]) for _, t, k, d in self.graph.out_edges(node, keys=True, data=True)]
        if direction in ("both", "in"):
            found += [(h, k, d["weight"]) for h, _, k, d in self.graph.in_edges(node, keys=True, data=True)]
        found = [f for f in found if (relation is None or f[1] == relation) and f[2] >= min_weight]
        return sorted(found, key=lambda f: (-f[2], f[0], f[1]))

    def shortest_path(self, source: str, target: str, *, weighted: bool = False) -> list[str] | None:
        """Nodes of a shortest path between two nodes, ignoring edge direction; ``None`` when none exists.

        ``weighted=True`` treats an edge of weight ``w`` as a step of length ``1 / w`` (heavier = closer).
        """
        self.require(source, field="source")
        self.require(target, field="target")
        view = self.undirected()
        try:
            if weighted:
                return nx.bidirectional_dijkstra(view, source, target, weight=lambda u, v, d: 1.0 / d["weight"])[1]
            return nx.shortest_path(view, source, target)
        except nx.NetworkXNoPath:
            return None

    def paths(self, source: str, target: str, *, max_hops: int = 3, limit: int = 100) -> list[list[str]]:
        """Up to ``limit`` simple paths of at most ``max_hops`` edges between two nodes (direction ignored),
        shortest first."""
        self.require(source, field="source")
        self.require(target, field="target")
        found = []
        for path in nx.all_simple_paths(self.undirected(), source, target, cutoff=max_hops):
            found.append(path)
            if len(found) >= limit:
                break
        return sorted(found, key=lambda p: (len(p), p))

    def explain(self, path: list[str]) -> list[tuple[str, str, str, float]]:
        """The triples along a path (the heaviest edge between each consecutive pair, in its stored direction)."""
        steps = []
        for a, b in zip(path, path[1:]):
            edges = [(a, k, b, d["weight"]) for k, d in (self.graph.get_edge_data(a, b) or {}).items()]
            edges += [(b, k, a, d["weight"]) for k, d in (self.graph.get_edge_data(b, a) or {}).items()]
            if not edges:
                raise UserError(f"path: {a!r} and {b!r} are not adjacent")
            steps.append(max(edges, key=lambda e: (e[3], e[1])))
        return steps

    # ---- transformations -----------------------------------------------------------------------------------------

    def prune(self, min_weight: float, *, drop_isolated: bool = True) -> KnowledgeGraph:
        """A copy without the edges lighter than ``min_weight`` (and, by default, the nodes left without edges)."""
        graph = nx.MultiDiGraph()
        graph.add_nodes_from(self.graph.nodes(data=True))
        graph.add_edges_from(
            (h, t, k, d) for h, t, k, d in self.graph.edges(keys=True, data=True) if d["weight"] >= min_weight
        )
        if drop_isolated:
            graph.remove_nodes_from([n for n in list(graph.nodes) if graph.degree(n) == 0])
        return KnowledgeGraph(graph)

    def merge(self, other: KnowledgeGraph, *, combine: str = "max", inplace: bool = False) -> KnowledgeGraph:
        """The nodes and triples of both; a triple in both gets its weights combined (``max`` or ``sum``); node
        attributes of ``other`` win. A new graph, or this one changed with ``inplace=True`` (no copy: on a large
        graph the copy costs more than the merge)."""
        _check_choice("combine", combine, COMBINE)
        out = self if inplace else KnowledgeGraph(self.graph.copy())
        for node, attrs in other.graph.nodes(data=True):
            out.add_node(node, **attrs)
        out.add_triples(((h, k, t, d["weight"]) for h, t, k, d in other.graph.edges(keys=True, data=True)),
                        combine=combine)
        return out

    def subgraph(self, nodes: Iterable[str]) -> KnowledgeGraph:
        return KnowledgeGraph(self.graph.subgraph(list(nodes)).copy())

    def undirected(self) -> nx.Graph:
        """A simple undirected ``nx.Graph``; the weight between two nodes is the heaviest edge joining them.

        Cached: treat it as read-only (copy it to change it)."""
        if "undirected" not in self._cache:
            self._cache["undirected"] = self._build_undirected()
        return self._cache["undirected"]

    def _build_undirected(self) -> nx.Graph:
        view = nx.Graph()
        view.add_nodes_from(self.graph.nodes(data=True))
        for h, t, d in self.graph.edges(data=True):
            if h == t:
                continue
            w = d["weight"]
            if not view.has_edge(h, t) or view[h][t]["weight"] < w:
                view.add_edge(h, t, weight=w)
        return view

    def adjacency(self, nodes: list[str] | None = None) -> tuple[sp.csr_matrix, list[str]]:
        """Symmetric weighted adjacency (the :meth:`undirected` convention, no self-loops) as a CSR matrix, and the
        node order of its rows. ``nodes`` fixes the order (default: insertion order; that one is cached)."""
        if nodes is None:
            if "adjacency" not in self._cache:
                self._cache["adjacency"] = self._build_adjacency(list(self.graph.nodes))
            matrix, order = self._cache["adjacency"]
            return matrix, list(order)
        return self._build_adjacency(list(nodes))

    def _build_adjacency(self, order: list[str]) -> tuple[sp.csr_matrix, list[str]]:
        index = {n: i for i, n in enumerate(order)}
        if len(index) != len(order):
            raise UserError("nodes: the node list has duplicates")
        rows, cols, vals = [], [], []
        # Out-edges of the requested nodes cover every edge among them; a small node list stays cheap on a big graph.
        for h, t, d in self.graph.out_edges([n for n in order if n in self.graph], data=True):
            i, j = index.get(h), index.get(t)
            if i is None or j is None or i == j:
                continue
            rows.append(i)
            cols.append(j)
            vals.append(d["weight"])
        n = len(order)
        if not vals:
            return sp.csr_matrix((n, n)), order
        r = np.concatenate([np.asarray(rows), np.asarray(cols)])
        c = np.concatenate([np.asarray(cols), np.asarray(rows)])
        v = np.concatenate([np.asarray(vals, dtype=np.float64)] * 2)
        # Duplicate (i, j) entries (several relations, both directions) reduce to their maximum: sort by value so the
        # last write per cell is the largest, then keep the last occurrence of each cell.
        order_idx = np.lexsort((v, c, r))
        r, c, v = r[order_idx], c[order_idx], v[order_idx]
        last = np.ones(len(r), dtype=bool)
        last[:-1] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
        matrix = sp.csr_matrix((v[last], (r[last], c[last])), shape=(n, n))
        return matrix, order

    # ---- persistence -----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Node-link data (``networkx.node_link_data``) with a format tag."""
        return {"format": FORMAT, **nx.node_link_data(self.graph, edges="edges")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "graph") -> KnowledgeGraph:
        if not isinstance(data, Mapping) or "nodes" not in data or "edges" not in data:
            raise DataError(f"{where}: not a node-link graph (expected 'nodes' and 'edges' lists)")
        data = {k: v for k, v in data.items() if k != "format"}
        try:
            graph = nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")
        except (KeyError, TypeError, nx.NetworkXError) as err:
            raise DataError(f"{where}: malformed node-link graph ({err})") from None
        for h, t, k, d in graph.edges(keys=True, data=True):
            d["weight"] = _check_weight(d.get("weight", 1.0), where=f"{where}: edge ({h!r}, {k!r}, {t!r})")
        return cls(graph)

    def save(self, path: str | os.PathLike) -> Path:
        """Write node-link JSON atomically (a crash never leaves a half-written graph)."""
        from ..hub import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> KnowledgeGraph:
        """Read a graph written by :meth:`save` (any networkx node-link JSON with an ``edges`` list works)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"graph: file {str(path)!r} does not exist; check the path (relative to {os.getcwd()})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"graph: {str(path)!r} is not valid JSON (line {err.lineno}: {err.msg})") from None
        return cls.from_dict(data, where=f"graph {str(path)!r}")


def read_triples(path: str | os.PathLike) -> list[tuple[str, str, str, float]]:
    """Read ``head, relation, tail[, weight]`` rows from a ``.tsv``, ``.csv`` or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"triples: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    out: list[tuple[str, str, str, float]] = []
    if suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"triples {str(path)!r} line {number}: invalid JSON ({err.msg})") from None
            missing = [k for k in TRIPLE_FIELDS[:3] if k not in row]
            if missing:
                raise DataError(f"triples {str(path)!r} line {number}: missing {', '.join(missing)}")
            out.append(_triple(row["head"], row["relation"], row["tail"], row.get("weight", 1.0), path, number))
        return out
    if suffix not in (".tsv", ".csv"):
        raise DataError(f"triples: {str(path)!r} has an unsupported extension; use .tsv, .csv or .jsonl")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    reader = csv.reader(io.StringIO("\n".join(line for _, line in lines)), delimiter="\t" if suffix == ".tsv" else ",")
    rows = list(reader)
    columns = list(range(4))
    if rows and {c.strip().lower() for c in rows[0]} >= set(TRIPLE_FIELDS[:3]):
        header = [c.strip().lower() for c in rows[0]]
        columns = [header.index(f) if f in header else -1 for f in TRIPLE_FIELDS]
        rows, lines = rows[1:], lines[1:]
    for (number, _), row in zip(lines, rows):
        if len(row) < 3:
            raise DataError(f"triples {str(path)!r} line {number}: expected head, relation, tail[, weight]")
        weight = row[columns[3]] if 0 <= columns[3] < len(row) and row[columns[3]].strip() else 1.0
        out.append(_triple(row[columns[0]], row[columns[1]], row[columns[2]], weight, path, number))
    return out


def _triple(head, relation, tail, weight, path: Path, number: int) -> tuple[str, str, str, float]:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise DataError(f"triples {str(path)!r} line {number}: weight {weight!r} is not a number") from None
    values = [str(v).strip() for v in (head, relation, tail)]
    if not all(values):
        raise DataError(f"triples {str(path)!r} line {number}: head, relation and tail must not be empty")
    return values[0], values[1], values[2], _check_weight(weight, where=f"triples {str(path)!r} line {number}")


def _check_weight(weight: Any, *, where: str) -> float:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise DataError(f"{where}: weight {weight!r} is not a number") from None
    if not np.isfinite(weight) or weight <= 0:
        raise DataError(f"{where}: weight must be a finite number > 0, got {weight}")
    return weight


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        from ..errors import unknown_choice

        raise unknown_choice(field, value, choices)
