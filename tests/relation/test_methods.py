"""The ``graph_laplacian`` and ``label_relation`` methods: losses against hand computations, and recipe runs on a
tiny random model (a source classifier over some review domains, a target over others)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from hf_transfer.errors import RecipeError
from hf_transfer.methods import StepBatch
from hf_transfer.methods.graph_laplacian import GraphLaplacian, GraphLaplacianConfig, class_affinity
from hf_transfer.methods.label_relation import LabelRelationConfig, initialise_from_graph
from hf_transfer.recipe import load_recipe
from hf_transfer.relation import REVIEW_DOMAINS_GRAPH, KnowledgeGraph, label_transfer_plan

from ..conftest import write_jsonl


def hand_smoothness(vectors: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    pairs = [(i, j) for i in range(len(vectors)) for j in range(i + 1, len(vectors))]
    num = sum(adjacency[i, j] * ((vectors[i] - vectors[j]) ** 2).sum() for i, j in pairs)
    return num / sum(adjacency[i, j] for i, j in pairs)


def test_prototype_loss_matches_hand_computation():
    torch.manual_seed(0)
    adjacency = torch.tensor([[0, 0.5, 0.0], [0.5, 0, 2.0], [0.0, 2.0, 0]])
    method = GraphLaplacian(GraphLaplacianConfig(), feature_dim=4, num_labels=3)
    method.attach(adjacency, None)
    features = torch.randn(7, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 2, 2, 2, -100, -100])
    domain = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    out = method(StepBatch(logits=torch.randn(7, 3), features=features, labels=labels, domain=domain))
    prototypes = torch.stack([features[:2].mean(0), features[2:5].mean(0)])
    # only classes 0 and 2 are in the batch: their sub-graph has no edge (A_02 = 0) -> zero loss
    assert out.loss.item() == 0.0
    labels = torch.tensor([0, 1, 2, 2, 1, -100, -100])
    out = method(StepBatch(logits=torch.randn(7, 3), features=features, labels=labels, domain=domain))
    prototypes = torch.stack([features[0], features[[1, 4]].mean(0), features[2:4].mean(0)])
    expected = hand_smoothness(prototypes, adjacency)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert features.grad[5:].abs().sum() == 0  # target rows take no part
    assert out.logs["related_pairs"].item() == 2


def test_classifier_loss_and_gradient():
    torch.manual_seed(0)
    adjacency = torch.tensor([[0, 1.0, 0.25], [1.0, 0, 0.0], [0.25, 0.0, 0]])
    head = torch.nn.Linear(4, 3)
    method = GraphLaplacian(GraphLaplacianConfig(apply_to="classifier", normalized=False), feature_dim=4, num_labels=3)
    method.attach(adjacency, head)
    batch = StepBatch(logits=torch.randn(2, 3), features=torch.randn(2, 4), labels=torch.tensor([0, 1]),
                      domain=torch.tensor([0, 0]))
    out = method(batch)
    assert out.loss.item() == pytest.approx(hand_smoothness(head.weight, adjacency).item(), rel=1e-6)
    out.loss.backward()
    # d/dW of tr(W^T L W) / s = 2 L W / s
    lap = torch.diag(adjacency.sum(1)) - adjacency
    torch.testing.assert_close(head.weight.grad, 2 * lap @ head.weight.detach() / 1.25)
    assert not any(p is head.weight for p in method.parameters())  # the head stays the model's own


def test_class_affinity_links_names_and_config_errors():
    adjacency, report = class_affinity(GraphLaplacianConfig(), ["Camera & Photo", "electronics", "gardening"])
    assert report.unlinked == ["gardening"]
    assert adjacency[0, 1].item() == pytest.approx(0.9)  # related_to 0.9 in the shipped graph
    assert adjacency[2].abs().sum() == 0
    with pytest.raises(RecipeError, match="graph_laplacian.apply_to: unknown value 'weights'"):
        GraphLaplacianConfig(apply_to="weights")
    with pytest.raises(RecipeError, match="label_relation.decay"):
        LabelRelationConfig(decay=0.0)
    with pytest.raises(RecipeError, match="graph_laplacian.hop"):
        load_recipe({"method": ["graph_laplacian"], "graph_laplacian": {"hop": 2}})


TEXTS = {
    "books": ["the novel's plot and characters", "a well written book, great author", "slow chapters, dull story"],
    "dvd": ["the film's acting was superb", "this movie on dvd has extras", "boring director's cut"],
    "electronics": ["the charger stopped working", "battery lasts long, great speaker", "cable and adapter broke"],
    "kitchen_housewares": ["this blender is loud", "nonstick pan cleans easily", "knife set rusted quickly"],
    "camera_photo": ["sharp lens, fast autofocus", "the tripod wobbles", "memory card slot broke"],
    "music": ["the album's songs are catchy", "great guitar riffs on this cd", "the singer's voice is thin"],
}


def domain_rows(domains, n, seed):
    rng = random.Random(seed)
    return [{"text": rng.choice(TEXTS[d]), "label": d} for d in domains for _ in range(n)]


@pytest.fixture(scope="module")
def source_model_dir(tiny_model_dir, tmp_path_factory):
    """A tiny classifier trained (briefly) to tell four review domains apart; labels are domain names."""
    from hf_transfer import train

    folder = tmp_path_factory.mktemp("relation-source")
    source = write_jsonl(folder / "source.jsonl", domain_rows(["books", "dvd", "electronics", "kitchen_housewares"],
                                                             12, 0))
    train({"model_name_or_path": tiny_model_dir, "source_data": str(source), "target_data": None, "max_length": 32,
           "output_dir": str(folder / "model"), "max_steps": 3, "per_device_train_batch_size": 8,
           "learning_rate": 1e-3, "save_strategy": "no", "use_cpu": True, "disable_tqdm": True,
           "selection_validators": []})
    return str(folder / "model")


def test_label_relation_initialises_unseen_classes(source_model_dir, tmp_path):
    from hf_transfer import train
    from hf_transfer.backbones import find_feature_module
    from hf_transfer.run import load_trained

    target_classes = ["books", "camera_photo", "electronics", "music"]  # camera_photo and music are new
    target = write_jsonl(tmp_path / "target.jsonl", domain_rows(target_classes, 4, 1))
    result = train({
        "model_name_or_path": source_model_dir, "source_data": str(target), "target_data": None,
        "method": ["label_relation", "graph_laplacian"], "label_relation": {"link_with_encoder": False},
        "graph_laplacian": {"apply_to": "classifier"}, "max_length": 32, "output_dir": str(tmp_path / "out"),
        "max_steps": 1, "learning_rate": 0.0, "per_device_train_batch_size": 8, "save_strategy": "no",
        "use_cpu": True, "disable_tqdm": True, "selection_validators": [],
        "source_eval_fraction": 0.0,
    })
    m = result.metrics
    assert m["label_relation/same"] == 2 and m["label_relation/neighbours"] == 2 and m["label_relation/none"] == 0
    assert m["graph_laplacian/linked_classes"] == 4 and m["graph_laplacian/related_pairs"] >= 2
    report = json.loads((tmp_path / "out" / "label_relation.json").read_text())
    assert report["plan"]["camera_photo"]["from"][0][0] == "electronics"

    # With learning rate 0 the exported head is exactly the initialisation the plan prescribes.
    source, _ = load_trained(source_model_dir)
    exported, _ = load_trained(tmp_path / "out")
    _, src = find_feature_module(source, 4)
    _, tgt = find_feature_module(exported, 4)
    source_names = [source.config.id2label[i] for i in range(4)]
    names = [exported.config.id2label[i] for i in range(4)]
    kg = KnowledgeGraph.load(REVIEW_DOMAINS_GRAPH)
    plan = label_transfer_plan(kg, names, source_names, hops=2, decay=0.5)
    expected = torch.as_tensor(plan.matrix, dtype=torch.float32) @ src.weight.detach()
    torch.testing.assert_close(tgt.weight.detach(), expected)
    torch.testing.assert_close(tgt.weight[names.index("books")], src.weight[source_names.index("books")])


def test_label_relation_needs_a_trained_source(tiny_model_dir):
    from hf_transfer.backbones import load_classifier, load_tokenizer

    model = load_classifier(tiny_model_dir, num_labels=2)
    with pytest.raises(RecipeError, match="label_relation.source_model"):
        initialise_from_graph(LabelRelationConfig(source_model="/nonexistent"), model,
                              load_tokenizer(tiny_model_dir), ["books", "music"])
