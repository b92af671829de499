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

It adds no loss, so it combines with any method (``method: [label_relation, graph_laplacian]`` keeps the related
rows close while training). The plan and the link report go to ``label_relation.json`` beside the model and
their counts into ``metrics.json`` under ``label_relation/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .base import MethodConfig
from .registry import register_method

REPORT_FILE = "label_relation.json"


@dataclass
class LabelRelationConfig(MethodConfig):
    """Fields of ``label_relation`` (``trade_off`` is unused: the method adds no loss)."""

    graph: str = field(
        default="review_domains",
        metadata={"help": "Knowledge graph: a node-link JSON file, or 'review_domains' for the shipped example."},
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

    path = REVIEW_DOMAINS_GRAPH if spec == "review_domains" else spec
    try:
        return KnowledgeGraph.load(path)
    except DataError as err:
        raise DataError(f"{field}: {err} (or use 'review_domains' for the shipped graph)") from None


def initialise_from_graph(
    config: LabelRelationConfig, model, tokenizer, label_names: list[str], *, source_model=None
) -> dict[str, Any]:
    """Set the classifier rows of ``model`` (target classes ``label_names``) from the source classifier.

    ``source_model`` is a loaded source classifier, or ``None`` to load ``config.source_model`` (default: the
    model's own ``_name_or_path``). Returns the report written to ``label_relation.json``.
    """
    from ..backbones import find_feature_module
    from ..relation import apply_transfer_plan, encoder_embedder, label_transfer_plan, link_names

    kg = load_graph(config.graph, field="label_relation.graph")
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
    common = dict(embed=embed, threshold=config.link_threshold)
    target_links = link_names(label_names, kg, **common)
    source_links = link_names(source_labels, kg, **common)
    plan = label_transfer_plan(
        kg, target_links.nodes, source_links.nodes, target_names=label_names, source_names=source_labels,
        hops=config.hops, decay=config.decay, min_weight=config.min_weight,
    )
    _, source_layer = find_feature_module(source_model, len(source_labels))
    _, target_layer = find_feature_module(model, len(label_names))
    bias = source_layer.bias.detach() if source_layer.bias is not None else None
    initialised = apply_transfer_plan(target_layer, source_layer.weight.detach(), bias, plan)
    return {
        "initialised": initialised,
        "counts": {h: plan.how.count(h) for h in ("same", "neighbours", "none")},
        "plan": plan.to_dict(),
        "target_links": target_links.to_dict(),
        "source_links": source_links.to_dict(),
    }


def label_relation_prepare(config: LabelRelationConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: initialise the head, record the report (every process computes the same rows)."""
    from ..hub import atomic_write_json

    data, args = context["data"], context["args"]
    report = initialise_from_graph(config, context["model"], context["tokenizer"], list(data.labels.names))
    if args.process_index == 0:
        atomic_write_json(Path(args.output_dir) / REPORT_FILE, report)
    context["metrics"].update({f"label_relation/{k}": v for k, v in report["counts"].items()})
    context["metrics"]["label_relation/unlinked_target_labels"] = report["target_links"]["counts"]["unlinked"]
    return context


register_method("label_relation", LabelRelationConfig, prepare=label_relation_prepare)
