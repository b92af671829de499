"""Entity types behind BIO tags, and how a tagger's head starts from another tagger's head when their types differ.

A tagger's classes are tags (``O``, ``B-person``, ``I-person``, ...), but the correspondence between two label sets
is one of *entity types* (``politician`` is a kind of ``person``). :func:`type_plan_from_map` (a recipe's
``label_map``) and :func:`type_plan_from_graph` (a knowledge graph, :mod:`hf_transfer.relation`) make a type-level
:class:`~hf_transfer.relation.TransferPlan`; :func:`expand_to_tags` turns it into the tag-level plan that
:func:`~hf_transfer.relation.apply_transfer_plan` applies to the classifier rows:

* ``O`` copies the source ``O`` row;
* ``B-t`` is the mix of the source ``B-s`` rows with the type plan's weights ``w(t, s)``, and ``I-t`` the same mix
  of the ``I-s`` rows (a source type with no ``I-`` tag drops out of the ``I-`` mix, the rest renormalised);
* a type the plan leaves out keeps its fresh rows.

:func:`plan_markdown` writes the type plan as the table the log and the model card show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import RecipeError

OUTSIDE = "O"


def entity_type(tag: str) -> str | None:
    """``"B-person"`` -> ``"person"``; ``"O"`` -> ``None``."""
    return tag[2:] if tag[:2] in ("B-", "I-") else None


def is_bio(tags: Sequence[str]) -> bool:
    """Whether every name is ``O``, ``B-<type>`` or ``I-<type>``, with at least one ``B-`` (a tagger's label set)."""
    return (all(isinstance(t, str) and (t == OUTSIDE or entity_type(t)) for t in tags)
            and any(str(t).startswith("B-") for t in tags))


def entity_types(tags: Sequence[str]) -> list[str]:
    """The entity types of a tag list, in the order they first appear."""
    return list(dict.fromkeys(t for t in (entity_type(tag) for tag in tags) if t))


def _plan(target: list[str], source: list[str], rows: dict[str, tuple[str, dict[str, float]]]):
    from ..relation import TransferPlan

    matrix = np.zeros((len(target), len(source)))
    how, sources = [], []
    for i, name in enumerate(target):
        kind, weights = rows.get(name, ("none", {}))
        total = sum(weights.values())
        if kind == "none" or total <= 0:
            how.append("none")
            sources.append([])
            continue
        for s, w in weights.items():
            matrix[i, source.index(s)] = w / total
        order = np.argsort(-matrix[i], kind="stable")
        how.append(kind)
        sources.append([(source[j], float(matrix[i, j])) for j in order if matrix[i, j] > 0])
    return TransferPlan(list(target), list(source), matrix, how, sources)


def type_plan_from_map(label_map: Mapping[str, Any], target_types: Sequence[str], source_types: Sequence[str], *,
                       field: str = "label_relation.label_map"):
    """The type plan a recipe gives: ``{target type: source type | [source types] | {source type: weight}}``.

    A mapped type is ``"given"`` (a list: equal weights; a mapping: its weights, normalised); an unmapped type that
    is also a source type is ``"same"``; any other keeps its fresh rows (``"none"``).

    Raises:
        RecipeError: a key that is not a target type, a value that is not a source type, a weight that is not > 0.
    """
    rows: dict[str, tuple[str, dict[str, float]]] = {}
    for target, value in label_map.items():
        if target not in target_types:
            raise RecipeError(f"{field}: {target!r} is not an entity type of the target data (types: "
                              f"{', '.join(target_types)}); name target types on the left")
        if isinstance(value, str):
            weights = {value: 1.0}
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            weights = {v: 1.0 for v in value}
        elif isinstance(value, Mapping) and value:
            weights = dict(value)
        else:
            raise RecipeError(f"{field}.{target}: expected a source type, a list of them or {{type: weight}}, got "
                              f"{value!r}")
        for source, weight in weights.items():
            if source not in source_types:
                raise RecipeError(f"{field}.{target}: {source!r} is not an entity type of the source tagger (types: "
                                  f"{', '.join(source_types)}); name source types on the right")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise RecipeError(f"{field}.{target}: the weight of {source!r} must be a number > 0, got {weight!r}")
        rows[target] = ("given", {s: float(w) for s, w in weights.items()})
    for target in target_types:
        if target not in rows and target in source_types:
            rows[target] = ("same", {target: 1.0})
    return _plan(list(target_types), list(source_types), rows)


def type_plan_from_graph(kg: Any, target_types: Sequence[str], source_types: Sequence[str], *,
                         embed: Callable | None = None, threshold: float = 0.6, hops: int = 2, decay: float = 0.5,
                         min_weight: float = 0.0):
    """The type plan a knowledge graph gives: each type linked to a node (:func:`hf_transfer.relation.link_names`),
    then :func:`hf_transfer.relation.label_transfer_plan`. Returns ``(plan, target links, source links)``."""
    from ..relation import label_transfer_plan, link_names

    target_links = link_names(list(target_types), kg, embed=embed, threshold=threshold)
    source_links = link_names(list(source_types), kg, embed=embed, threshold=threshold)
    plan = label_transfer_plan(kg, target_links.nodes, source_links.nodes, target_names=list(target_types),
                               source_names=list(source_types), hops=hops, decay=decay, min_weight=min_weight)
    return plan, target_links, source_links


def expand_to_tags(type_plan: Any, target_tags: Sequence[str], source_tags: Sequence[str]):
    """The tag-level plan of a type-level one (see the module docstring), over ``target_tags`` x ``source_tags``."""
    source_tags = list(source_tags)
    types = list(type_plan.target_names)
    rows: dict[str, tuple[str, dict[str, float]]] = {}
    for tag in target_tags:
        kind = entity_type(tag)
        if kind is None:
            if OUTSIDE in source_tags:
                rows[tag] = ("same", {OUTSIDE: 1.0})
            continue
        t = types.index(kind)
        weights = {f"{tag[:2]}{s}": w for s, w in type_plan.sources[t] if f"{tag[:2]}{s}" in source_tags}
        if type_plan.how[t] != "none" and weights:
            rows[tag] = (type_plan.how[t], weights)
    return _plan(list(target_tags), source_tags, rows)


def plan_markdown(type_plan: Any) -> str:
    """``| target type | how | from source types (weights) |``, one row per type, ``O`` first."""
    lines = ["| target type | how | from source types (weights) |", "|---|---|---|", "| O | same | O (1.00) |"]
    for name, how, sources in zip(type_plan.target_names, type_plan.how, type_plan.sources):
        mix = ", ".join(f"{s} ({w:.2f})" for s, w in sources) or "— (fresh initialisation)"
        lines.append(f"| {name} | {how} | {mix} |")
    return "\n".join(lines) + "\n"
