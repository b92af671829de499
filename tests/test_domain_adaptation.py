"""Domain adaptation end to end on the tiny random BERT: every method through ``hf_transfer.train``, the DANN
discriminator across a checkpoint and resume, and label-free model selection during training."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hf_transfer
from hf_transfer.selection import (
    DENSITY_CS,
    VALIDATORS,
    choose_density_C,
    compute_scores,
    cross_fitted_density_ratio,
    selection_summary,
    validator_metric,
)
from hf_transfer.trainer import METHOD_STATE_FILE
from hf_transfer.validators import domain_density_ratio, snd_score

# method -> (recipe block, a key the method logs)
METHODS = {
    "dann": ({"hidden_size": 16}, "dann/domain_accuracy"),
    "cdan": ({"hidden_size": 16}, "cdan/domain_loss"),
    "mmd": ({}, "mmd/bandwidth"),
    "coral": ({}, "coral/loss"),
    "entropy": ({"trade_off": 0.1}, "entropy/loss"),
    "mcc": ({}, "mcc/loss"),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_alone_and_exports_a_plain_model(tiny_recipe, tiny_model_dir, method):
    from transformers import AutoModelForSequenceClassification

    block, logged_key = METHODS[method]
    tiny_recipe.update(method=method, **{method: block}, class_names=["negative", "positive"])
    result = hf_transfer.train(tiny_recipe)
    history = result.trainer.state.log_history
    values = [entry[logged_key] for entry in history if logged_key in entry]
    assert values and all(np.isfinite(values)), (method, values)
    assert all(np.isfinite(entry["task_loss"]) for entry in history if "task_loss" in entry)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and 0 <= metrics["target_accuracy"] <= 1
    # the export is the classifier alone: no discriminator, kernel or projection among its weights
    exported = load_file(str(result.output_dir / "model.safetensors"))
    reference = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).state_dict()
    assert set(exported) <= set(reference)
    assert any(not torch.equal(exported[k], reference[k]) for k in exported if "encoder" in k)  # it trained
    if method == "dann":  # (tests/test_train.py checks the same in an interpreter without hf_transfer)
        from transformers import pipeline

        classify = pipeline("text-classification", model=str(result.output_dir), device="cpu")
        assert classify("the blender broke after a week")[0]["label"] in {"negative", "positive"}


def test_dann_discriminator_is_checkpointed_and_restored_on_resume(tiny_recipe, tmp_path, monkeypatch):
    from hf_transfer.trainer import TransferTrainer

    tiny_recipe.update(method="dann", dann={"hidden_size": 16}, save_strategy="steps", save_steps=2, max_steps=4)
    full = hf_transfer.train(tiny_recipe)
    saved = load_file(str(full.output_dir / "checkpoint-2" / METHOD_STATE_FILE))
    discriminator = full.trainer.method_stack.methods["dann"].discriminator
    assert set(saved) == {f"methods.dann.discriminator.{k}" for k in discriminator.state_dict()}
    final = {k: v.detach().clone() for k, v in full.trainer.method_stack.state_dict().items()}
    assert any(not torch.equal(saved[k], final[k]) for k in saved)  # the discriminator trained between the two

    # Right after the resume loads the checkpoint, the discriminator must be the saved one, bit for bit (a fresh one
    # is the step-0 initialisation, two optimizer steps away from it).
    at_load = []
    load = TransferTrainer._load_optimizer_and_scheduler

    def spy(self, checkpoint):
        load(self, checkpoint)
        at_load.append({k: v.detach().clone() for k, v in self.method_stack.state_dict().items()})

    monkeypatch.setattr(TransferTrainer, "_load_optimizer_and_scheduler", spy)
    resumed = hf_transfer.train({
        **tiny_recipe, "output_dir": str(tmp_path / "resumed"),
        "resume_from_checkpoint": str(full.output_dir / "checkpoint-2"),
    })
    assert len(at_load) == 1
    for key, value in saved.items():
        torch.testing.assert_close(at_load[0][key].cpu(), value, rtol=0, atol=0)
    # and training goes on from there (bitwise-equal resumes, dropout RNG included, are not claimed here)
    assert resumed.trainer.state.global_step == 4
    after = resumed.trainer.method_stack.state_dict()
    assert any(not torch.equal(after[k].cpu(), saved[k]) for k in saved)


# ---- label-free model selection ------------------------------------------------------------------------------


def test_selection_scores_are_logged_and_picks_match_the_log(tiny_recipe):
    tiny_recipe.update(
        method="dann", dann={"hidden_size": 16}, max_steps=6, eval_strategy="steps", eval_steps=2,
        save_strategy="steps", save_steps=2, metric_for_best_model="dev", load_best_model_at_end=True,
    )
    result = hf_transfer.train(tiny_recipe)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    history = result.trainer.state.log_history
    scored = [entry for entry in history if "eval_snd" in entry]
    assert [entry["step"] for entry in scored] == [2, 4, 6]
    accuracy = {entry["step"]: entry["eval_target_accuracy"] for entry in history if "eval_target_accuracy" in entry}
    for name in VALIDATORS:
        by_step = {entry["step"]: entry[f"eval_{name}"] for entry in scored}
        assert all(np.isfinite(list(by_step.values()))), name
        pick = metrics[f"selection/{name}/step"]
        assert by_step[pick] == max(by_step.values())  # the argmax: every validator is higher-is-better
        assert metrics[f"selection/{name}/score"] == by_step[pick]
        assert metrics[f"selection/{name}/target_accuracy"] == accuracy[pick]
    assert metrics["selection/oracle/target_accuracy"] == max(accuracy.values())
    assert accuracy[metrics["selection/oracle/step"]] == max(accuracy.values())
    # metric_for_best_model: dev kept the checkpoint DEV prefers, and that is the model exported and evaluated
    assert result.trainer.state.best_global_step == metrics["selection/dev/step"]
    assert result.trainer.state.best_metric == pytest.approx(metrics["selection/dev/score"])
    assert metrics["target_accuracy"] == pytest.approx(metrics["selection/dev/target_accuracy"])


def test_selection_runs_for_source_only_training_and_never_sees_target_labels(tiny_recipe):
    from hf_transfer.data import load_raw_data, prepare_data
    from hf_transfer.recipe import load_recipe
    from hf_transfer.selection import build_selection

    tiny_recipe.update(eval_strategy="steps", eval_steps=2, selection_validators=["snd", "entropy"],
                       selection_max_target_samples=40)
    result = hf_transfer.train(tiny_recipe)  # method finetune: the target is never trained on, but still scored
    assert {"selection/snd/step", "selection/entropy/step"} <= set(result.metrics)
    assert not any(k.startswith(("selection/iwv", "selection/dev")) for k in result.metrics)

    recipe = load_recipe(tiny_recipe)
    raw = load_raw_data(recipe.data, seed=42)
    data = prepare_data(raw, result.tokenizer, recipe.data)
    selection = build_selection(recipe, result.model, data)
    assert len(selection.target) == 40 and "labels" not in selection.target.column_names


def test_no_selection_without_periodic_evaluation_or_target(tiny_recipe):
    result = hf_transfer.train(tiny_recipe)  # eval_strategy "no"
    assert result.trainer.extra_eval_metrics is None
    assert not any(k.startswith("selection/") for k in result.metrics)
    result = hf_transfer.train(tiny_recipe, eval_strategy="steps", eval_steps=2, target_data=None,
                               overwrite_output_dir=True)  # another recipe into the same folder
    assert result.trainer.extra_eval_metrics is None
    assert not any(k.startswith("eval_snd") for entry in result.trainer.state.log_history for k in entry)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"metric_for_best_model": "snd", "load_best_model_at_end": False},
         "'snd' is a label-free validator, but eval_strategy is 'no'"),
        ({"metric_for_best_model": "eval_iwv", "eval_strategy": "steps", "target_data": None},
         "'iwv' is a label-free validator, but target_data is not set"),
        ({"metric_for_best_model": "snd", "eval_strategy": "steps", "selection_validators": ["dev"]},
         "not in selection_validators"),
        ({"metric_for_best_model": "snd", "eval_strategy": "steps", "greater_is_better": False},
         "greater_is_better: every label-free validator is higher-is-better"),
        ({"selection_validators": ["snd", "dve"]}, "selection_validators: unknown value 'dve'; did you mean 'dev'"),
    ],
)
def test_selection_misconfiguration_fails_before_training(tiny_recipe, fields, message):
    with pytest.raises(hf_transfer.RecipeError, match=message):
        hf_transfer.train({**tiny_recipe, **fields})


def test_selection_can_be_turned_off_from_the_command_line():
    from hf_transfer.recipe import load_recipe, parse_cli_overrides

    recipe = load_recipe(None, parse_cli_overrides(["--selection_validators", "none"]))
    assert recipe.methods.selection_validators == []
    recipe = load_recipe(None, parse_cli_overrides(["--selection_validators", "snd", "dev"]))
    assert recipe.methods.selection_validators == ["snd", "dev"]


def test_validator_metric_names():
    assert validator_metric("snd") == "snd" and validator_metric("eval_dev") == "dev"
    assert validator_metric("eval_target_accuracy") is None and validator_metric("loss") is None


def test_cross_fitted_density_ratio_uses_the_other_half():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(20, 3)), rng.normal(0.5, 1, size=(30, 3))
    weights = cross_fitted_density_ratio(source, target, C=1.0, seed=7)
    order = np.random.default_rng(7).permutation(20)
    first, second = np.array_split(order, 2)
    np.testing.assert_allclose(weights[first], domain_density_ratio(source[second], target, source[first],
                                                                    random_state=7))
    np.testing.assert_allclose(weights[second], domain_density_ratio(source[first], target, source[second],
                                                                     random_state=7))
    # rows that look like the target get larger weights
    assert np.corrcoef(source.sum(1), weights)[0, 1] > 0


def test_density_classifier_regularisation_is_chosen_by_held_out_log_loss():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(150, 5))
    same = rng.normal(size=(150, 5))
    shifted = rng.normal(size=(150, 5)) + np.array([2.0, -2.0, 0, 0, 0])
    # no signal: the strongest regularisation (probabilities at the prior) has the best log-loss
    assert choose_density_C(source, same) == min(DENSITY_CS)
    # a strong, real shift: the weakest regularisation
    assert choose_density_C(source, shifted) == max(DENSITY_CS)


def test_compute_scores_by_hand():
    rng = np.random.default_rng(1)
    target_logits = rng.normal(size=(12, 3))
    scores = compute_scores(target_logits=target_logits, validators=["snd", "entropy", "iwv"])
    assert list(scores) == ["snd", "entropy"]  # iwv needs the source slice and features: skipped, not guessed
    p = np.exp(target_logits) / np.exp(target_logits).sum(1, keepdims=True)
    assert scores["entropy"] == pytest.approx(float((p * np.log(p)).sum(1).mean()))
    assert scores["snd"] == pytest.approx(snd_score(p))

    source_logits, labels = rng.normal(size=(10, 3)), rng.integers(0, 3, size=10)
    source_features, target_features = rng.normal(size=(10, 4)), rng.normal(size=(12, 4))
    full = compute_scores(target_logits=target_logits, source_logits=source_logits, source_labels=labels,
                          source_features=source_features, target_features=target_features, seed=3)
    assert list(full) == list(VALIDATORS)
    weights = cross_fitted_density_ratio(source_features, target_features, seed=3)
    logp = source_logits - np.log(np.exp(source_logits).sum(1, keepdims=True))
    losses = -logp[np.arange(10), labels]
    assert full["iwv"] == pytest.approx(-np.mean(weights * losses))


def test_selection_summary_from_a_log_history():
    history = [
        {"loss": 0.7, "step": 10},
        {"eval_target_accuracy": 0.60, "step": 10},
        {"eval_snd": 1.0, "eval_dev": -0.5, "step": 10},
        {"eval_target_accuracy": 0.80, "step": 20},
        {"eval_snd": 3.0, "eval_dev": -0.9, "step": 20},
        {"eval_target_accuracy": 0.70, "step": 30},
        {"eval_snd": 3.0, "eval_dev": float("nan"), "step": 30},  # a tie goes to the earlier step; NaN is skipped
        {"target_accuracy": 0.99, "step": 30},  # the final evaluation is not one of the periodic ones
    ]
    out = selection_summary(history, ["snd", "dev", "iwv"])
    assert out == {
        "selection/snd/step": 20, "selection/snd/score": 3.0, "selection/snd/target_accuracy": 0.80,
        "selection/dev/step": 10, "selection/dev/score": -0.5, "selection/dev/target_accuracy": 0.60,
        "selection/oracle/step": 20, "selection/oracle/target_accuracy": 0.80,
    }
    no_labels = selection_summary([e for e in history if "eval_target_accuracy" not in e], ["snd"])
    assert no_labels == {"selection/snd/step": 20, "selection/snd/score": 3.0}
