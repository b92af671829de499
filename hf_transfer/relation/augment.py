"""Knowledge-augmented inputs: append linearised graph triples about what a text mentions to the text.

Rule (deterministic): the text's words (and adjacent word pairs) are normalised as in
:func:`hf_transfer.relation.normalise` and matched against the normalised names, ``label`` and ``aliases`` of the
graph's nodes; for the first ``max_nodes`` matched nodes, in order of mention, their ``max_triples`` heaviest edges
(ties by neighbour name) are written as ``"head relation tail"`` with ``_`` as spaces, joined by ``"; "`` and
appended after ``separator``. A text that mentions no node is left unchanged. Train and evaluate on texts augmented
the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .graph import KnowledgeGraph
from .linking import normalise

_WORD = re.compile(r"[\w'&]+")


def linearise(kg: KnowledgeGraph, node: str, *, max_triples: int = 3) -> list[str]:
    """The ``max_triples`` heaviest triples at ``node`` as ``"head relation tail"`` strings."""
    out = []
    for neighbour, relation, _ in kg.neighbours(node)[:max_triples]:
        out_edge = kg.graph.has_edge(node, neighbour, key=relation)
        head, tail = (node, neighbour) if out_edge else (neighbour, node)
        out.append(" ".join(x.replace("_", " ") for x in (head, relation, tail)))
    return out


class KnowledgeAugmenter:
    """Callable ``text -> augmented text`` for one graph (the node index is built once).

    Args:
        kinds: only nodes whose ``kind`` is one of these are matched (e.g. ``["domain", "aspect"]``).
        max_nodes, max_triples: how many mentioned nodes, and triples per node, are appended.
        separator: put between the text and the triples (e.g. the tokenizer's ``[SEP]``).
    """

    def __init__(self, kg: KnowledgeGraph, *, kinds: Sequence[str] | None = None, max_nodes: int = 2,
                 max_triples: int = 3, separator: str = " | "):
        self.kg, self.max_nodes, self.max_triples, self.separator = kg, max_nodes, max_triples, separator
        self.index: dict[str, str] = {}
        for node, attrs in kg.graph.nodes(data=True):
            if kinds is not None and attrs.get("kind") not in kinds:
                continue
            for text in [node, attrs.get("label"), *(attrs.get("aliases") or [])]:
                if text:
                    self.index.setdefault(normalise(text), node)

    def mentions(self, text: str) -> list[str]:
        """Nodes the text mentions, in order of first mention (a two-word match wins over its first word)."""
        words = [normalise(w) for w in _WORD.findall(text)]
        found: list[str] = []
        i = 0
        while i < len(words):
            pair = f"{words[i]} {words[i + 1]}" if i + 1 < len(words) else None
            if pair in self.index:
                node, i = self.index[pair], i + 2
            elif words[i] in self.index:
                node, i = self.index[words[i]], i + 1
            else:
                i += 1
                continue
            if node not in found:
                found.append(node)
        return found

    def __call__(self, text: str) -> str:
        triples = [t for node in self.mentions(text)[: self.max_nodes]
                   for t in linearise(self.kg, node, max_triples=self.max_triples)]
        return text + self.separator + "; ".join(triples) if triples else text

    def augment(self, texts: Iterable[str]) -> list[str]:
        return [self(t) for t in texts]
