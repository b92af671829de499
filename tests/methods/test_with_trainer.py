"""The domain-adaptation methods through the real train() path, on the tiny random BERT of tests/conftest.py."""

import json

import hf_transfer


def test_all_da_methods_train_together_and_log(tiny_recipe):
    tiny_recipe.update(
        method=["dann", "cdan", "mmd", "coral", "entropy", "mcc"],
        dann={"hidden_size": 16},
        cdan={"hidden_size": 16, "multilinear_map": "randomized", "randomized_dim": 32},
        mmd={"joint": True, "estimator": "linear"},
        entropy={"trade_off": 0.1},
        max_steps=4,
    )
    result = hf_transfer.train(tiny_recipe, class_names=["negative", "positive"])
    history = result.trainer.state.log_history
    logged = {key for entry in history for key in entry}
    for key in ("dann/domain_accuracy", "dann/lambda", "cdan/domain_loss", "mmd/bandwidth", "coral/loss", "mcc/loss"):
        assert key in logged, key
    losses = [entry["entropy/loss"] for entry in history if "entropy/loss" in entry]
    assert losses and all(0 <= v <= 0.7 for v in losses)  # binary entropy is at most ln 2
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert 0 <= metrics["target_accuracy"] <= 1
