"""Metrics through the shipped `evaluate` modules: values against scikit-learn and seqeval, bootstrap intervals
against scipy and a hand loop, name resolution and the recipe field."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from hf_transfer.errors import RecipeError
from hf_transfer.metrics import available_metrics, build_compute_metrics, check_metric_names
from hf_transfer.metrics.bootstrap import bootstrap_intervals, resample_indices
from hf_transfer.metrics.functional import get_entities
from hf_transfer.metrics.registry import MODULES_DIR

SKLEARN = {"f1": f1_score, "precision": precision_score, "recall": recall_score}


def _classification_case(seed: int = 0, n: int = 240, k: int = 4):
    """Logits and labels where class k-1 is only ever predicted, never a reference (the edge macro averaging
    must get right), and class 0 is never predicted."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k - 1, n)
    logits = rng.normal(size=(n, k))
    logits[:, 0] -= 10.0
    return logits, labels


def test_every_shipped_classification_metric_equals_scikit_learn():
    logits, labels = _classification_case()
    preds = logits.argmax(-1)
    names = [n for n in available_metrics() if n != "seqeval"]
    values = build_compute_metrics(names).compute(logits, labels)
    assert values["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=1e-12)
    for average in ("macro", "micro", "weighted", "binary"):
        for score, reference in SKLEARN.items():
            if average == "binary":  # one-vs-rest for class 1 (scikit-learn refuses "binary" on 4 classes)
                expected = reference(labels, preds, average=None, labels=range(4), zero_division=0)[1]
            else:
                expected = reference(labels, preds, average=average, zero_division=0)
            assert values[f"{average}_{score}"] == pytest.approx(expected, abs=1e-12), (average, score)
    # bare names are the macro averages, reported under the macro key
    assert set(values) == {n for n in names if n not in ("f1", "precision", "recall")}


def test_the_modules_are_evaluate_modules_that_load_offline_from_their_folder():
    import evaluate

    logits, labels = _classification_case(seed=1)
    preds = logits.argmax(-1)
    f1 = evaluate.load(str(MODULES_DIR / "f1"))
    assert isinstance(f1, evaluate.Metric)
    assert f1.compute(predictions=preds, references=labels, average="weighted")["f1"] == pytest.approx(
        f1_score(labels, preds, average="weighted", zero_division=0))
    accuracy = evaluate.load(str(MODULES_DIR / "accuracy" / "accuracy.py"))
    assert accuracy.compute(predictions=preds, references=labels)["accuracy"] == pytest.approx(
        accuracy_score(labels, preds))


def test_the_in_process_path_equals_every_evaluate_module():
    """Training calls the shipped modules' compute without `import evaluate` (3 s a process); evaluate.load of each
    module folder gives the same values, for every average and for the entity metric."""
    import evaluate

    from hf_transfer.metrics.registry import SHIPPED_METRICS, ShippedModule, load_module

    logits, labels = _classification_case(seed=2)
    preds = logits.argmax(-1)
    for name, shipped in SHIPPED_METRICS.items():
        fast = load_module(name)
        assert isinstance(fast, ShippedModule)
        if shipped.kind == "entity":
            tags = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"]]
            guess = [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"]]
            kwargs, args = {}, {"predictions": guess, "references": tags}
        else:
            kwargs, args = shipped.compute_kwargs, {"predictions": preds, "references": labels}
        module = evaluate.load(str(MODULES_DIR / shipped.module))
        assert fast.compute(**args, **kwargs) == module.compute(**args, **kwargs), name


def test_default_metrics_keep_their_keys_and_skip_ignored_labels():
    from transformers import EvalPrediction

    from hf_transfer.data import accuracy_metrics

    logits, labels = _classification_case(seed=2)
    masked = labels.copy()
    masked[::5] = -100  # padding / unlabelled rows never count
    keep = masked != -100
    result = accuracy_metrics(EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=masked))
    assert list(result) == ["accuracy", "macro_f1"]
    preds = logits.argmax(-1)[keep]
    assert result["accuracy"] == pytest.approx(accuracy_score(labels[keep], preds))
    assert result["macro_f1"] == pytest.approx(f1_score(labels[keep], preds, average="macro"))


def test_bootstrap_interval_equals_scipy_percentile_bootstrap_on_the_same_resamples():
    logits, labels = _classification_case(seed=3, n=150, k=3)
    preds = logits.argmax(-1)
    suite = build_compute_metrics(["accuracy", "macro_f1"])
    intervals = suite.intervals(logits, labels, num_resamples=400, confidence=0.9, seed=11)
    for key, statistic in (("accuracy", lambda p, r: accuracy_score(r, p)),
                           ("macro_f1", lambda p, r: f1_score(r, p, average="macro", zero_division=0))):
        reference = scipy.stats.bootstrap((preds, labels), statistic, paired=True, vectorized=False,
                                          method="percentile", n_resamples=400, confidence_level=0.9,
                                          rng=np.random.default_rng(11)).confidence_interval
        assert intervals[key] == pytest.approx((reference.low, reference.high), abs=1e-12), key
    low, high = intervals["accuracy"]
    assert low < accuracy_score(labels, preds) < high


def test_bootstrap_chunks_draw_the_same_resamples_as_one_draw():
    # a hand loop on one (B, n) draw is the reference; the chunked, vectorised path must match it exactly
    rng = np.random.default_rng(5)
    preds, labels = rng.integers(0, 3, 90), rng.integers(0, 3, 90)
    indices = np.random.default_rng(2).integers(0, 90, (300, 90))
    hand = [f1_score(labels[i], preds[i], average="weighted", zero_division=0) for i in indices]
    suite = build_compute_metrics(["weighted_f1"])
    resampler = suite.metrics[0].resampler(preds, labels)
    chunked = bootstrap_intervals(90, resampler, num_resamples=300, seed=2, max_indices=90 * 7)
    assert chunked["weighted_f1"] == pytest.approx(tuple(np.percentile(hand, [2.5, 97.5])), abs=1e-12)
    assert sum(len(c) for c in resample_indices(90, 300, seed=2, max_indices=90 * 7)) == 300


# ---- entities ---------------------------------------------------------------------------------------------------


def _random_tags(rng, n_sentences: int, types=("PER", "LOC", "ORG"), prefixes=("B", "I", "O", "O")):
    """Tag sequences with every irregularity a tagger produces: I- after O, type switches inside a span, E-/S-."""
    sentences = []
    for _ in range(n_sentences):
        length = int(rng.integers(1, 12))
        tags = []
        for _ in range(length):
            prefix = prefixes[int(rng.integers(0, len(prefixes)))]
            tags.append("O" if prefix == "O" else f"{prefix}-{types[int(rng.integers(0, len(types)))]}")
        sentences.append(tags)
    return sentences


def test_entities_are_chunked_as_seqeval_does():
    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    rng = np.random.default_rng(0)
    for tags in _random_tags(rng, 300, prefixes=("B", "I", "E", "S", "O", "O")):
        assert get_entities(tags) == seqeval.get_entities(tags), tags


def test_entity_metric_equals_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(1)
    refs = _random_tags(rng, 120)
    # predictions: the references with a quarter of the tags replaced
    preds = [[t if rng.random() > 0.25 else _random_tags(rng, 1)[0][0] for t in s] for s in refs]
    values = build_compute_metrics(["seqeval"]).metrics[0].compute(preds, refs)
    assert values["overall_precision"] == pytest.approx(seqeval.precision_score(refs, preds))
    assert values["overall_recall"] == pytest.approx(seqeval.recall_score(refs, preds))
    assert values["overall_f1"] == pytest.approx(seqeval.f1_score(refs, preds))
    assert values["overall_accuracy"] == pytest.approx(seqeval.accuracy_score(refs, preds))
    report = seqeval.classification_report(refs, preds, output_dict=True)
    for type_ in ("PER", "LOC", "ORG"):
        assert values[f"{type_}_precision"] == pytest.approx(report[type_]["precision"])
        assert values[f"{type_}_recall"] == pytest.approx(report[type_]["recall"])
        assert values[f"{type_}_f1"] == pytest.approx(report[type_]["f1-score"])
        assert values[f"{type_}_number"] == report[type_]["support"]


def test_entity_metric_on_token_logits_and_its_bootstrap_over_sentences():
    seqeval = pytest.importorskip("seqeval.metrics")
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, (40, 9))
    labels[:, 0] = -100  # [CLS]
    labels[rng.random((40, 9)) < 0.2] = -100  # later sub-tokens
    logits = rng.normal(size=(40, 9, 5))
    rows, cols = np.nonzero(labels >= 0)
    logits[rows, cols, labels[rows, cols]] += 1.5  # right more often than not
    preds = logits.argmax(-1)
    refs_tags = [[id2label[int(t)] for t in row[row != -100]] for row in labels]
    pred_tags = [[id2label[int(p)] for p, t in zip(pr, row) if t != -100] for pr, row in zip(preds, labels)]
    suite = build_compute_metrics(["seqeval", "accuracy"], id2label=id2label)
    values = suite.compute(logits, labels)
    assert values["overall_f1"] == pytest.approx(seqeval.f1_score(refs_tags, pred_tags))
    keep = labels != -100
    assert values["accuracy"] == pytest.approx(accuracy_score(labels[keep], preds[keep]))  # per token
    # the entity interval resamples sentences: a hand loop over the same index draws, scored by seqeval
    intervals = suite.intervals(logits, labels, num_resamples=60, seed=4)
    draws = np.random.default_rng(4).integers(0, 40, (60, 40))
    hand = [seqeval.f1_score([refs_tags[i] for i in d], [pred_tags[i] for i in d]) for d in draws]
    assert intervals["overall_f1"] == pytest.approx(tuple(np.percentile(hand, [2.5, 97.5])), abs=1e-12)


def test_seqeval_module_has_the_hub_metric_output_shape():
    import evaluate

    metric = evaluate.load(str(MODULES_DIR / "seqeval"))
    out = metric.compute(predictions=[["B-PER", "I-PER", "O", "O"]], references=[["B-PER", "I-PER", "O", "B-LOC"]])
    assert out["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert out["LOC"]["recall"] == 0.0 and out["LOC"]["number"] == 1
    assert out["overall_recall"] == 0.5 and out["overall_precision"] == 1.0
    assert out["overall_accuracy"] == 0.75


# ---- names -------------------------------------------------------------------------------------------------------


def test_unknown_metric_offline_is_one_line_naming_the_field(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError) as err:
        build_compute_metrics(["accuracy", "macro_f11"])
    message = str(err.value)
    assert message.startswith("metrics: 'macro_f11'") and "\n" not in message
    assert "did you mean 'macro_f1'" in message and "weighted_recall" in message
    with pytest.raises(RecipeError, match="metrics: name at least one metric"):
        check_metric_names([])
    assert check_metric_names(["f1", "accuracy", "macro_f1"]) == ["macro_f1", "accuracy"]


def test_an_entity_metric_on_a_sentence_classifier_is_refused():
    logits, labels = _classification_case()
    with pytest.raises(RecipeError, match="metrics: 'seqeval' scores token classification"):
        build_compute_metrics(["seqeval"]).compute(logits, labels)


MATTHEWS_MODULE = '''
import datasets
import evaluate
from sklearn.metrics import matthews_corrcoef


class Matthews(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="", citation="", features=datasets.Features(
            {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
'''


def test_a_module_that_is_not_shipped_loads_through_evaluate_and_gets_an_interval(tmp_path, monkeypatch):
    # what a Hub name does online: evaluate.load(name); here a local module folder, which needs no network
    from sklearn.metrics import matthews_corrcoef

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "matthews"
    folder.mkdir()
    (folder / "matthews.py").write_text(MATTHEWS_MODULE)
    logits, labels = _classification_case(seed=6, n=60, k=3)
    preds = logits.argmax(-1)
    suite = build_compute_metrics(["accuracy", str(folder)])
    values = suite.compute(logits, labels)
    assert values["matthews_correlation"] == pytest.approx(matthews_corrcoef(labels, preds))
    intervals = suite.intervals(logits, labels, num_resamples=30, seed=1)
    draws = np.random.default_rng(1).integers(0, 60, (30, 60))
    hand = [matthews_corrcoef(labels[d], preds[d]) for d in draws]
    assert intervals["matthews_correlation"] == pytest.approx(tuple(np.percentile(hand, [2.5, 97.5])))


def test_recipe_field_metrics(tiny_recipe, monkeypatch):
    from hf_transfer.recipe import load_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_recipe(tiny_recipe).data.metrics == ["accuracy", "macro_f1"]
    recipe = load_recipe({**tiny_recipe, "metrics": ["accuracy", "f1", "weighted_recall"]})
    assert recipe.data.metrics == ["accuracy", "macro_f1", "weighted_recall"]
    assert "weighted_recall" in recipe.to_yaml()
    with pytest.raises(RecipeError, match="metrics: 'bogus'"):
        load_recipe({**tiny_recipe, "metrics": ["bogus"]})
    # task-list families report their own metrics: the field is refused there, not silently ignored
    tasks = [{"name": "books", "data": tiny_recipe["source_data"]}]
    with pytest.raises(RecipeError, match="metrics: not used in a multi-task recipe"):
        load_recipe({"tasks": tasks, "metrics": ["accuracy"]})


def test_training_reports_the_recipe_metrics_equal_to_scikit_learn(tiny_recipe):
    import hf_transfer
    from hf_transfer.data import accuracy_metrics  # noqa: F401  (the default path stays importable)

    result = hf_transfer.train({**tiny_recipe, "metrics": ["accuracy", "macro_f1", "weighted_precision"]})
    trainer = result.trainer
    target = trainer.eval_dataset["target"]
    output = trainer.predict(target, metric_key_prefix="check")
    preds, labels = output.predictions.argmax(-1), output.label_ids
    m = result.metrics
    assert m["target_accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["target_macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert m["target_weighted_precision"] == pytest.approx(
        precision_score(labels, preds, average="weighted", zero_division=0))
    assert {"source_accuracy", "source_macro_f1", "source_loss", "target_loss"} <= set(m)
    assert not any(k.startswith(("source_", "target_")) and k.endswith(("_runtime", "_per_second")) for k in m)
