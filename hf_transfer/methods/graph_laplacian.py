"""``method: graph_laplacian`` — keep related classes close: a Laplacian smoothness term from a knowledge graph.

The classes are linked to graph nodes (as in ``label_relation``), giving a symmetric affinity ``A`` between
classes (direct edge weights with ``hops: 1``; discounted random-walk relatedness through intermediate nodes with
``hops > 1``; :func:`hf_transfer.relation.label_adjacency`). The loss is the smoothness of class vectors ``W`` on
that graph, divided by the total affinity so its scale does not grow with the number of related pairs::

    loss = tr(W^T L W) / sum_{i<j} A_ij = sum_{i<j} A_ij ||w_i - w_j||^2 / sum_{i<j} A_ij,    L = D - A

``apply_to`` picks the class vectors (the key is not ``on``, which YAML reads as ``true``):

* ``prototypes`` (default) — the mean feature (what the classifier head reads) of each class among the batch's
  labelled source rows; only classes present in the batch take part (their sub-graph's ``A``);
* ``classifier`` — the rows of the classifier's output layer (always all classes).

Classes that link to no node take no part. With ``normalized: true`` the normalised Laplacian is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import RecipeError
from ._layers import at_least, check_choice, check_trade_off, full_precision, side_weights, zero_loss
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .label_relation import load_graph
from .registry import register_method

TARGETS = ("prototypes", "classifier")


@dataclass
class GraphLaplacianConfig(MethodConfig):
    """Fields of ``graph_laplacian``."""

    graph: str = field(
        default="review_domains",
        metadata={"help": "Knowledge graph: a node-link JSON file, or 'review_domains' for the shipped example."},
    )
    apply_to: str = field(
        default="prototypes", metadata={"help": "What is smoothed: 'prototypes' (batch class means) or 'classifier'."}
    )
    hops: int = field(
        default=1, metadata={"help": "1: direct edges relate classes; > 1: random walks of that length."}
    )
    decay: float = field(default=0.5, metadata={"help": "Weight of each further step of the walk (hops > 1)."})
    normalized: bool = field(default=False, metadata={"help": "Use the normalised Laplacian I - D^-1/2 A D^-1/2."})
    link_threshold: float | None = field(
        default=None,
        metadata={"help": "Also link class names to nodes by encoder embedding at this cosine similarity (off)."},
    )

    def __post_init__(self):
        check_trade_off("graph_laplacian", self.trade_off)
        check_choice("graph_laplacian.apply_to", self.apply_to, TARGETS)
        if self.hops < 1:
            raise RecipeError(f"graph_laplacian.hops: must be >= 1, got {self.hops}")
        if not 0 < self.decay <= 1:
            raise RecipeError(f"graph_laplacian.decay: must be in (0, 1], got {self.decay}")


def smoothness_loss(vectors: torch.Tensor, adjacency: torch.Tensor, *, normalized: bool = False) -> torch.Tensor:
    """``tr(W^T L W) / sum_{i<j} A_ij`` (0 when no pair is related)."""
    from ..relation import laplacian_smoothness

    total = adjacency.sum() / 2.0
    # Without related pairs the Laplacian is 0, and so is the loss: divide by 1 then (a device-side choice, where an
    # `if` on the total would wait on the device every step).
    return laplacian_smoothness(vectors, adjacency, normalized=normalized) / torch.where(total > 0, total, 1.0)


class GraphLaplacian(TransferMethod):
    """The smoothness term. The class affinity (and, for ``apply_to: classifier``, the classifier layer) is attached by
    the method's ``prepare`` hook, which knows the class names and the model; see :func:`graph_laplacian_prepare`."""

    def __init__(self, config: GraphLaplacianConfig, *, feature_dim: int, num_labels: int):
        super().__init__(config, feature_dim=feature_dim, num_labels=num_labels)
        self.register_buffer("adjacency", torch.zeros(num_labels, num_labels), persistent=False)
        # A plain list, not a submodule: the classifier belongs to the model (its optimiser, its DDP wrapper).
        self._classifier: list[torch.nn.Module] = []

    def attach(self, adjacency: torch.Tensor, classifier: torch.nn.Module | None) -> None:
        self.adjacency.copy_(adjacency.to(self.adjacency.dtype))
        self._classifier[:] = [classifier] if classifier is not None else []

    def forward(self, batch: StepBatch) -> MethodOutput:
        config: GraphLaplacianConfig = self.config
        adjacency = self.adjacency.to(batch.features.device)
        with full_precision(batch.features):
            if config.apply_to == "classifier":
                if not self._classifier:
                    raise RuntimeError("graph_laplacian: the prepare hook did not attach the classifier")
                weight = self._classifier[0].weight.float()
                loss = smoothness_loss(weight, adjacency, normalized=config.normalized)
                return MethodOutput(loss + zero_loss(batch), {})
            # Class means of the labelled source rows, by weighting rows rather than selecting them (no wait on the
            # device). Classes absent from the batch get a zero prototype and are cut out of the graph (isolated
            # nodes add nothing to either Laplacian), which is the present classes' sub-graph.
            # (F.one_hot would read the labels' range on the host; -100 matches no class here.)
            source, _ = side_weights(batch.domain)
            classes = torch.arange(adjacency.shape[0], device=batch.labels.device)
            onehot = (batch.labels.unsqueeze(1) == classes.unsqueeze(0)).float() * source.unsqueeze(1)
            counts = onehot.sum(0)
            prototypes = (onehot.T @ batch.features.float()) / counts.clamp_min(1).unsqueeze(1)
            present = (counts > 0).float()
            sub = adjacency * present.unsqueeze(1) * present.unsqueeze(0)
            loss = smoothness_loss(prototypes, sub, normalized=config.normalized) * at_least(present.sum(), 2)
            return MethodOutput(loss + zero_loss(batch), {"related_pairs": (sub > 0).sum() / 2.0})


def class_affinity(config: GraphLaplacianConfig, label_names: list[str], *, embed=None) -> tuple[torch.Tensor, Any]:
    """``(C, C)`` affinity between the classes and the link report; unlinked classes get zero rows."""
    from ..relation import label_adjacency, link_names

    kg = load_graph(config.graph, field="graph_laplacian.graph")
    threshold = config.link_threshold if config.link_threshold is not None else 1.0
    report = link_names(label_names, kg, embed=embed if config.link_threshold is not None else None,
                        threshold=threshold)
    linked = [i for i, node in enumerate(report.nodes) if node is not None]
    out = torch.zeros(len(label_names), len(label_names), dtype=torch.float64)
    if len(linked) >= 2:
        sub = label_adjacency(kg, [report.nodes[i] for i in linked], hops=config.hops, decay=config.decay)
        idx = torch.tensor(linked)
        out[idx.unsqueeze(1), idx.unsqueeze(0)] = torch.as_tensor(sub)
    return out, report


def graph_laplacian_prepare(config: GraphLaplacianConfig, context: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare`` hook: link the class names, build the affinity, hand it (and the classifier) to the method."""
    from ..backbones import find_feature_module

    model, names = context["model"], list(context["data"].labels.names)
    embed = None
    if config.link_threshold is not None:
        from ..relation import encoder_embedder

        embed = encoder_embedder(model, context["tokenizer"])
    adjacency, report = class_affinity(config, names, embed=embed)
    _, classifier = find_feature_module(model, len(names))
    methods = [m for m in context.get("methods", {}).values() if isinstance(m, GraphLaplacian)]
    if not methods:
        raise RuntimeError("graph_laplacian: the trainer did not pass its methods to the prepare hook")
    for method in methods:
        method.attach(adjacency, classifier)
    metrics = context["metrics"]
    metrics["graph_laplacian/linked_classes"] = len(report.linked)
    metrics["graph_laplacian/related_pairs"] = int((adjacency > 0).sum().item() // 2)
    return context


register_method("graph_laplacian", GraphLaplacianConfig, GraphLaplacian, prepare=graph_laplacian_prepare)
