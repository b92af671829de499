"""Contrastive-pair adaptation: the pair sampler, the losses against hand computations, adaptation on a tiny random
BERT, the few-shot evaluation and the meta-training path that use it."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from hf_transfer.meta import EpisodicLearner, LearnerConfig, RowPool, evaluate_few_shot
from hf_transfer.meta.contrastive import (
    contrastive_adapt,
    contrastive_meta_loss,
    contrastive_pairs,
    contrastive_train,
    fit_head,
    select_rows,
    self_train,
)
from hf_transfer.meta.protonet import Embedder

POSITIVE = ["good great fine", "great good nice", "nice fine good", "fine nice great"]
NEGATIVE = ["bad awful poor", "poor bad terrible", "terrible awful bad", "awful poor terrible"]


# ---- pairs ---------------------------------------------------------------------------------------------------


def test_pairs_by_hand():
    """Labels 0 0 1 1: positives {(0,1), (2,3)}, negatives the 4 cross pairs; iterations 1 -> 4 of each, so each
    positive twice (cycled) and each negative once."""
    first, second, target = contrastive_pairs([0, 0, 1, 1], iterations=1, seed=0)
    assert len(target) == 8 and target.sum() == 4
    pairs = [tuple(sorted(p)) for p in zip(first.tolist(), second.tolist())]
    positives = sorted(p for p, t in zip(pairs, target) if t == 1)
    negatives = sorted(p for p, t in zip(pairs, target) if t == 0)
    assert positives == [(0, 1), (0, 1), (2, 3), (2, 3)]
    assert negatives == [(0, 2), (0, 3), (1, 2), (1, 3)]


@pytest.mark.parametrize("labels", [[0] * 8 + [1] * 8, [0, 0, 0, 1, 1, 2, 2, 2, 2], [1, 0] * 16])
@pytest.mark.parametrize("iterations", [1, 5])
def test_pairs_counts_balance_and_no_self_pair(labels, iterations):
    labels = np.asarray(labels)
    first, second, target = contrastive_pairs(labels, iterations=iterations, seed=3)
    n = len(labels)
    assert len(first) == len(second) == len(target) == 2 * iterations * n
    assert target.sum() == iterations * n  # balanced whatever the class sizes
    assert (first != second).all()
    np.testing.assert_array_equal(target == 1, labels[first] == labels[second])
    # Every distinct pair of the kind is used before any repeats (SetFit's cycling through a shuffled list).
    all_pos = {(i, j) for i, j in itertools.combinations(range(n), 2) if labels[i] == labels[j]}
    used_pos = {tuple(sorted(p)) for p, t in zip(zip(first.tolist(), second.tolist()), target) if t == 1}
    assert used_pos == all_pos if iterations * n >= len(all_pos) else len(used_pos) == iterations * n


def test_pairs_are_seeded():
    a = contrastive_pairs([0] * 8 + [1] * 8, iterations=2, seed=7)
    b = contrastive_pairs([0] * 8 + [1] * 8, iterations=2, seed=7)
    c = contrastive_pairs([0] * 8 + [1] * 8, iterations=2, seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_pairs_refuse_what_has_no_pair():
    with pytest.raises(ValueError, match="no positive pair"):
        contrastive_pairs([0, 1, 2], iterations=1)
    with pytest.raises(ValueError, match="no negative pair"):
        contrastive_pairs([1, 1, 1], iterations=1)
    with pytest.raises(ValueError, match="contrastive_iterations"):
        contrastive_pairs([0, 0, 1, 1], iterations=0)


# ---- losses and head -----------------------------------------------------------------------------------------


def test_meta_loss_by_hand():
    """Rows e0 = (1, 0), e1 = (0, 1), e2 = (1, 1), labels 0 0 1: the positive pair (0,1) has cos 0, the negatives
    (0,2), (1,2) cos 1/sqrt(2) each; loss = 0.5 * ((0 - 1)^2 + (1/sqrt 2)^2) = 0.5 * (1 + 0.5) = 0.75."""
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert float(contrastive_meta_loss(e, torch.tensor([0, 0, 1]))) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="two rows of one class"):
        contrastive_meta_loss(e, torch.tensor([0, 1, 2]))


def test_head_is_sklearn_logistic_regression_on_normalised_embeddings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    y = np.array([0, 1] * 6)
    head = fit_head(x, y)
    reference = LogisticRegression(max_iter=1000).fit(x / np.linalg.norm(x, axis=1, keepdims=True), y)
    assert isinstance(head, LogisticRegression)
    np.testing.assert_allclose(head.coef_, reference.coef_, rtol=1e-6)


def test_self_training_adds_the_most_confident_rows_of_each_class():
    """Two clusters, one labelled row each, nine unlabelled: the refitted head equals sklearn's fit on the labelled
    rows plus, of the rows predicted in each class, the most confident half (rounded), with the predicted labels."""
    rng = np.random.default_rng(1)
    labelled = np.array([[3.0, 0.0], [-3.0, 0.0]])
    labels = [1, 0]
    unlabelled = np.concatenate([rng.normal([3, 0], 0.3, (4, 2)), rng.normal([-3, 0], 0.3, (4, 2)),
                                 [[0.1, 5.0]]])  # the last row sits between the classes: least confident
    head = LogisticRegression(max_iter=1000).fit(labelled, labels)
    proba = head.predict_proba(unlabelled)
    predicted = proba.argmax(1)
    chosen = []
    for c in (0, 1):
        rows = [i for i in range(len(unlabelled)) if predicted[i] == c]
        rows.sort(key=lambda i: -proba[i, c])
        chosen += rows[: max(1, round(0.5 * len(rows)))]
    assert 8 not in chosen  # the in-between row is never among the confident half
    expected = LogisticRegression(max_iter=1000).fit(np.concatenate([labelled, unlabelled[chosen]]),
                                                     np.concatenate([labels, head.classes_[predicted[chosen]]]))
    refit = self_train(head, labelled, labels, unlabelled, fraction=0.5, rounds=1)
    np.testing.assert_allclose(refit.coef_, expected.coef_)
    with pytest.raises(ValueError, match="self_training_fraction"):
        self_train(head, labelled, labels, unlabelled, fraction=0)


# ---- adaptation on a tiny random BERT --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tiny_model_dir):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = dict(tokenizer(POSITIVE + NEGATIVE, padding=True, return_tensors="pt"))
    embedder = Embedder(AutoModel.from_pretrained(tiny_model_dir))
    return embedder, batch, [1] * 4 + [0] * 4, tokenizer


def test_select_rows_trims_padding(toy):
    _, batch, _, tokenizer = toy
    long = dict(tokenizer(["a", "a much longer text with many more tokens in it"], padding=True, return_tensors="pt"))
    short = select_rows(long, [0])
    assert short["input_ids"].shape == (1, 3)  # [CLS] a [SEP]
    assert select_rows(long, [1, 0])["input_ids"].shape[1] == long["input_ids"].shape[1]


def test_adaptation_learns_a_separable_toy_set(toy):
    embedder, batch, labels, _ = toy
    before = {k: v.clone() for k, v in embedder.state_dict().items()}
    clf = contrastive_adapt(embedder, batch, labels, iterations=10, lr=1e-3, epochs=3, seed=0)
    losses = clf.losses
    assert len(losses) == 3 * (2 * 10 * 8) // 16
    assert np.mean(losses[-5:]) < 0.25 * np.mean(losses[:5])
    assert isinstance(clf.head, LogisticRegression)
    np.testing.assert_array_equal(clf.predict(batch), labels)
    assert clf.logits(batch).argmax(-1).tolist() == labels
    for k, v in embedder.state_dict().items():  # the given encoder is untouched (a copy adapts)
        assert torch.equal(v, before[k]), k
    again = contrastive_adapt(embedder, batch, labels, iterations=10, lr=1e-3, epochs=3, seed=0)
    assert again.losses == losses  # pairs and dropout both follow the seed


def test_lora_adaptation_trains_the_adapter_only(toy):
    embedder, batch, labels, _ = toy
    adapted, losses = contrastive_train(embedder, batch, labels, iterations=4, lr=1e-2, params="lora", seed=0)
    assert hasattr(adapted.encoder, "peft_config")
    base = dict(embedder.encoder.named_parameters())
    changed_lora = 0
    for name, p in adapted.encoder.named_parameters():
        if "lora_" in name:
            changed_lora += int("lora_B" in name and p.abs().sum() > 0)  # B starts at zero
        else:
            plain = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base[plain]), name
    assert changed_lora > 0 and len(losses) == 4


def test_few_shot_evaluation_with_contrastive(toy):
    embedder, batch, labels, tokenizer = toy
    rows = [{k: v[i][batch["attention_mask"][i].bool()].tolist() for k, v in batch.items()} for i in range(8)]
    pool = RowPool(rows, tokenizer)
    learner = EpisodicLearner(embedder, LearnerConfig(contrastive_iterations=4, contrastive_lr=1e-3))
    result = evaluate_few_shot(learner, pool, labels, shots=2, adapt="contrastive", episodes=2, n_query=2, seed=0)
    again = evaluate_few_shot(learner, pool, labels, shots=2, adapt="contrastive", episodes=2, n_query=2, seed=0)
    assert len(result.accuracies) == 2 and result.accuracies == again.accuracies
    assert LearnerConfig(contrastive_params="lora").contrastive_learning_rate == 1e-3
    assert LearnerConfig().contrastive_learning_rate == 2e-5


def test_contrastive_meta_step_reduces_the_episode_loss(toy):
    """meta_method: contrastive backpropagates contrastive_meta_loss over the episode's support and query rows."""
    embedder, batch, labels, _ = toy
    import copy

    learner = EpisodicLearner(copy.deepcopy(embedder), LearnerConfig(meta_method="contrastive"))
    support = select_rows(batch, [0, 1, 4, 5])
    query = select_rows(batch, [2, 3, 6, 7])
    s_labels, q_labels = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 0, 0])
    optimizer = torch.optim.AdamW(learner.meta_parameters(), lr=1e-3)
    learner.eval()  # no dropout: the loss must match a forward pass
    first = learner.meta_step(support, s_labels, query, q_labels, 2)
    with torch.no_grad():
        expected = contrastive_meta_loss(torch.cat([learner.embedder(**support), learner.embedder(**query)]),
                                         torch.cat([s_labels, q_labels]))
    assert first == pytest.approx(float(expected), rel=1e-5)
    for _ in range(20):
        optimizer.step()
        optimizer.zero_grad()
        last = learner.meta_step(support, s_labels, query, q_labels, 2)
    assert last < 0.5 * first


# ---- meta-training and the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("peft", [None, {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query",
                                                                                                          "value"]}])
def test_meta_train_contrastive_then_contrastive_adaptation(tiny_model_dir, review_files, tmp_path, peft):
    """meta_method: contrastive trains (a finite loss over the steps), adapts with contrastive by
    default at evaluation (with LoRA: the meta-trained adapter adapts), saves a folder that reloads as contrastive."""
    from hf_transfer.meta import load_meta_learner, train_meta

    recipe = {
        "model_name_or_path": tiny_model_dir, "meta_method": "contrastive", "n_way": 2, "k_shot": 2, "n_query": 3,
        "tasks": [{"name": "books", "data": review_files["source"]}],
        "test_tasks": [{"name": "kitchen", "data": review_files["target"], "eval_fraction": 0.5}],
        "eval_shots": [2], "eval_episodes": 2, "eval_n_query": 4, "contrastive_iterations": 2,
        "max_length": 32, "max_steps": 3, "learning_rate": 1e-3, "logging_steps": 1,
        "output_dir": str(tmp_path / "meta"), "use_cpu": True, "seed": 3,
        **({"peft": peft, "contrastive_params": "lora"} if peft else {}),
    }
    result = train_meta(recipe)
    metrics = result.metrics
    assert metrics["eval_adapt"] == "contrastive" and 0 <= metrics["kitchen/2shot_accuracy"] <= 1
    assert metrics["train_steps"] == 3 and np.isfinite(metrics["train_loss"])
    loaded, _ = load_meta_learner(str(tmp_path / "meta"))
    assert loaded.config.meta_method == "contrastive"
    assert loaded.config.contrastive_params == ("lora" if peft else "all")


def test_cli_evaluate_contrastive_and_export(tiny_model_dir, review_files, tmp_path, capsys):
    import json

    from hf_transfer.cli import main

    code = main(["evaluate", tiny_model_dir, "--data", review_files["target"], "--shots", "2", "--episodes", "2",
                 "--n_query", "4", "--max_length", "32", "--adapt", "contrastive", "--contrastive_iterations", "2",
                 "--contrastive_lr", "1e-3", "--export", str(tmp_path / "fewshot")])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adapt"] == "contrastive" and out["episodes"] == 2 and out["export"] == str(tmp_path / "fewshot")
    for name in ("model.safetensors", "modules.json", "model_head.pkl", "model_head.safetensors", "README.md"):
        assert (tmp_path / "fewshot" / name).is_file(), name
