"""`method: instance_weighting` through the trainer on a tiny model: weights estimated, used, logged, saved."""

import json

import numpy as np
import pytest

import hf_transfer
from hf_transfer.errors import RecipeError
from hf_transfer.methods.instance_weighting import WEIGHTS_FILE


def test_weights_are_estimated_used_and_saved(tiny_recipe):
    result = hf_transfer.train(
        tiny_recipe, method=["instance_weighting"], **{"instance_weighting.estimator_args": "{max_weight: 5}"}
    )
    weights = np.load(result.output_dir / WEIGHTS_FILE)
    train = result.trainer.train_dataset
    assert len(weights) == len(train) == 86 and "sample_weight" in train.column_names
    np.testing.assert_allclose(train["sample_weight"], weights, rtol=1e-6)
    assert weights.min() >= 0 and weights.max() <= 5 + 1e-5 and weights.mean() == pytest.approx(1, abs=1e-4)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    ess = metrics["instance_weights/ess"]
    assert ess == pytest.approx(weights.sum() ** 2 / (weights**2).sum(), rel=1e-4) and 1 <= ess <= 86
    assert metrics["instance_weights/max"] == pytest.approx(weights.max(), rel=1e-5)


def test_weighting_combines_with_an_adaptation_loss(tiny_recipe):
    result = hf_transfer.train(tiny_recipe, method=["instance_weighting", "dann"],
                               **{"instance_weighting.estimator": "nearest_neighbors"})
    train = result.trainer.train_dataset
    assert {"sample_weight", "target_input_ids"} <= set(train.column_names)  # weighted and paired
    assert any("dann/loss" in h for h in result.trainer.state.log_history)


def test_bad_estimator_names_the_field():
    with pytest.raises(RecipeError, match=r"instance_weighting.estimator: unknown value 'kmn'; did you mean 'kmm'"):
        hf_transfer.load_recipe({"method": "instance_weighting", "instance_weighting": {"estimator": "kmn"}})


def test_weighting_needs_target(tiny_recipe):
    with pytest.raises(RecipeError, match="instance_weighting: needs target_data"):
        hf_transfer.train({**tiny_recipe, "target_data": None, "method": "instance_weighting"})
