"""``method: label_relation`` — start the target classifier from the source classifier through a knowledge graph.

For a target whose classes differ from the source's (new classes, renamed ones, a subset), each target class is
linked to a graph node (exact name, normalised name, then — with ``link_with_encoder`` — the encoder embedding of
the name; see :mod:`hf_transfer.relation.linking`), and so is each source class (the ``id2label`` of
``source_model``). Then, before training:

* a target class that *is* a source class copies its classifier row and bias;
* a target class the source never saw starts at the weighted mean of the source rows of its graph neighbours
  (weights: discounted random-walk relatedness within ``hops`` steps, :func:`hf_transfer.relation.label_transfer_plan`)
  — so it can be predicted zero-shot, before any target label is seen;
* a class with no linked neighbour keeps its fresh initialisation.

The target model should start from the source model's encoder (``model_name_or_path: <source model folder>``: the
head is re-created at the target's size, the encoder kept), since the source rows only make sense on the features
they were trained on. ``source_model`` defaults to ``model_name_or_path``.

**Taggers** (token classification, BIO tags): the correspondence is one of *entity types*, given in the recipe
(``label_map: {politician: person, country: [location], ...}``; an unmapped type that is also a source type copies
itself, any other starts fresh) or found in the graph (default ``graph: entity_types``, the shipped graph of the
CoNLL-2003 and CrossNER types). It expands to tags (:mod:`hf_transfer.tasks.token_labels`): ``O`` copies ``O``,
``B-t`` mixes the source ``B-`` rows and ``I-t`` the ``I-`` rows with the type's weights. The type plan is logged
as a table and shown in the model card (``Label correspondence``).

It adds no loss, so it combines with any method (``method: [label_relation, graph_laplacian]`` keeps the related
rows close while training). The plan and the link report go to ``label_relation.json`` beside the model and
their counts into ``metrics.json`` under ``label_relation/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .base import MethodConfig
from .registry import register_method

logger = logging.getLogger(__name__)

REPORT_FILE = "label_relation.json"
#: the shipped graph of entity types (CoNLL-2003 and CrossNER), ``graph: entity_types``
ENTITY_TYPES_GRAPH = str(Path(__file__).resolve().parents[1] / "resources" / "entity_types_graph.json")


@dataclass
class LabelRelationConfig(MethodConfig):
    """Fields of ``label_relation`` (``trade_off`` is unused: the method adds no loss)."""

    graph: str | None = field(
        default=None,
        metadata={"help": "Knowledge graph: a node-link JSON file, or a shipped one: 'review_domains' (review "
                  "domains) or 'entity_types' (CoNLL and CrossNER entity types). Default: entity_types for a "
                  "tagger, review_domains otherwise."},
    )
    label_map: dict | str | None = field(
        default=None,
        metadata={"help": "Taggers: the entity-type correspondence {target type: source type, [source types] or "
                  "{source type: weight}}, used instead of the graph."},
    )
    source_model: str | None = field(
        default=None,
        metadata={"help": "Trained source classifier whose head rows are transferred. Default: model_name_or_path."},
    )
    hops: int = field(default=2, metadata={"help": "Random-walk steps that count as related (1 = direct edges)."})
    decay: float = field(default=0.5, metadata={"help": "Weight of each further step of the walk, in (0, 1]."})
    min_weight: float = field(
        default=0.0, metadata={"help": "Drop neighbours whose share of a target row is below this (then renormalise)."}
    )
    link_with_encoder: bool = field(
        default=True,
        metadata={"help": "Link names that match no node by string through the model encoder's embeddings."},
    )
    link_threshold: float = field(
        default=0.6, metadata={"help": "Minimum cosine similarity of an embedding link."}
    )

    def __post_init__(self):
        if isinstance(self.label_map, str):  # given on the command line as YAML text
            import yaml

            try:
                parsed = yaml.safe_load(self.label_map)
            except yaml.YAMLError:
                parsed = None
            if not isinstance(parsed, dict):
                raise RecipeError(f"label_relation.label_map: expected a mapping such as {{politician: person}}, got "
                                  f"{self.label_map!r}")
            self.label_map = parsed
        if self.label_map is not None and (not self.label_map or not all(isinstance(k, str) for k in self.label_map)):
            raise RecipeError("label_relation.label_map: expected a non-empty mapping {target type: source type}")
        if self.hops < 1:
            raise RecipeError(f"label_relation.hops: must be >= 1, got {self.hops}")
        if not 0 < self.decay <= 1:
            raise RecipeError(f"label_relation.decay: must be in (0, 1], got {self.decay}")
        if not 0 <= self.min_weight < 1:
            raise RecipeError(f"label_relation.min_weight: must be in [0, 1), got {self.min_weight}")
        if not -1 <= self.link_threshold <= 1:
            raise RecipeError(
                f"label_relation.link_threshold: a cosine similarity in [-1, 1], got {self.link_threshold}"
            )


def load_graph(spec: str, *, field: str):
    """A :class:`~hf_transfer.relation.KnowledgeGraph` from a path, or ``review_domains`` for the shipped one."""
    from ..errors import DataError
    from ..relation import REVIEW_DOMAINS_GRAPH, KnowledgeGraph

    path = {"review_domains": REVIEW_DOMAINS_GRAPH, "entity_types": ENTITY_TYPES_GRAPH}.get(spec, spec)
    try:
        return KnowledgeGraph.load(path)
    except DataError as err:
        raise DataError(f"{field}: {err} (or use 'review_domains' or 'entity_types' for a shipped graph)") from None


def initialise_from_graph(
    config: LabelRelationConfig, model, tokenizer, label_names: list[str], *, source_model=None
) -> dict[str, Any]:
    """Set the classifier rows of ``model`` (target classes ``label_names``) from the source classifier.

    ``source_model`` is a loaded source classifier, or ``None`` to load ``config.source_model`` (default: the
    model's own ``_name_or_path``). Returns the report written to ``label_relation.json``.
    """
    from ..backbones import find_feature_module
    from ..relation import apply_transfer_plan, encoder_embedder, label_transfer_plan, link_names
    from ..tasks.token_labels import is_bio

    if source_model is None:
        from ..tasks import load_trained

        path = config.source_model or getattr(model.config, "_name_or_path", None)
        if not path or not Path(path).is_dir():
            raise RecipeError(
                f"label_relation.source_model: {path!r} is not a trained model folder; set it to the source "
                "classifier (the folder `hf-transfer train` wrote)"
            )
        source_model, _ = load_trained(path)
    source_labels = [source_model.config.id2label[i] for i in range(source_model.config.num_labels)]
    embed = encoder_embedder(model, tokenizer) if config.link_with_encoder else None
    _, source_layer = find_feature_module(source_model, len(source_labels))
    _, target_layer = find_feature_module(model, len(label_names))
    if is_bio(label_names):
        return _initialise_tagger(config, target_layer, source_layer, label_names, source_labels, embed=embed)
    if config.label_map is not None:
        raise RecipeError("label_relation.label_map: maps entity types of taggers (BIO tags); this model's classes "
                          f"{label_names[:5]} are not tags: drop label_map and use the graph")
    kg = load_graph(config.graph or "review_domains", field="label_relation.graph")
    common = dict(embed=embed, threshold=config.link_threshold)
    target_links = link_names(label_names, kg, **common)
    source_links = link_names(source_labels, kg, **common)
    plan = label_transfer_plan(
        kg, target_links.nodes, source_links.nodes, target_names=label_names, source_names=source_labels,
        hops=config.hops, decay=config.decay, min_weight=config.min_weight,
    )
    bias = source_layer.bias.detach() if source_layer.bias is not None else None
    initialised = apply_transfer_plan(target_layer, source_layer.weight.detach(), bias, plan)
    return {
        "initialised": initialised,
        "counts": {h: plan.how.count(h) for h in ("same", "neighbours", "none")},
        "plan": plan.to_dict(),
        "target_links": target_links.to_dict(),
        "source_links": source_links.to_dict(),
    }


def _initialise_tagger(config: LabelRelationConfig, target_layer, source_layer, label_names: list[str],
                       source_labels: list[str], *, embed=None) -> dict[str, Any]:
    """A tagger's head: the plan is one of entity types (``label_map`` or the graph), expanded to BIO tags
    (:mod:`hf_transfer.tasks.token_labels`)."""
    from ..relation import apply_transfer_plan
    from ..tasks.token_labels import (
        entity_types,
        expand_to_tags,
        is_bio,
        plan_markdown,
        type_plan_from_graph,
        type_plan_from_map,
    )

    if not is_bio(source_labels):
        raise RecipeError(f"label_relation.source_model: the target model tags entities (BIO tags) but the source "
                          f"model's classes {source_labels[:5]} are not tags; start from a source tagger")
    target_types, source_types = entity_types(label_names), entity_types(source_labels)
    report: dict[str, Any] = {}
    if config.label_map is not None:
        type_plan = type_plan_from_map(config.label_map, target_types, source_types)
    else:
        kg = load_graph(config.graph or "entity_types", field="label_relation.graph")
        type_plan, target_links, source_links = type_plan_from_graph(
            kg, target_types, source_types, embed=embed, threshold=config.link_threshold, hops=config.hops,
            decay=config.decay, min_weight=config.min_weight)
        report.update(target_links=target_links.to_dict(), source_links=source_links.to_dict())
    plan = expand_to_tags(type_plan, label_names, source_labels)
    bias = source_layer.bias.detach() if source_layer.bias is not None else None
    initialised = apply_transfer_plan(target_layer, source_layer.weight.detach(), bias, plan)
    return {
        "initialised": initialised,
        "counts": {h: type_plan.how.count(h) for h in ("same", "given", "neighbours", "none")},
        "type_plan": type_plan.to_dict(),
        "table": plan_markdown(type_plan),
        "plan": plan.to_dict(),
        **report,
    }


def label_relation_prepare(config: LabelRelationConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: initialise the head, record the report (every process computes the same rows)."""
    from ..hub import atomic_write_json

    data, args = context["data"], context["args"]
    report = initialise_from_graph(config, context["model"], context["tokenizer"], list(data.labels.names))
    if args.process_index == 0:
        atomic_write_json(Path(args.output_dir) / REPORT_FILE, report)
        if "table" in report:  # a tagger's plan over entity types: in the log and in the model card
            from ..cards import write_card_section

            logger.info("hf-transfer: label_relation initialised %d head rows from the source tagger:\n%s",
                        report["initialised"], report["table"])
            write_card_section(args.output_dir, "label_relation", "Label correspondence",
                               "The head started from the source tagger's head, entity type by entity type (`B-` and "
                               "`I-` rows mixed with these weights, `O` copied):\n\n" + report["table"])
    context["metrics"].update({f"label_relation/{k}": v for k, v in report["counts"].items()})
    if "target_links" in report:
        context["metrics"]["label_relation/unlinked_target_labels"] = report["target_links"]["counts"]["unlinked"]
    return context


register_method("label_relation", LabelRelationConfig, prepare=label_relation_prepare)
