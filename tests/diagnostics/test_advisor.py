"""The advisor on cases whose answer is known from the rules' reasoning."""

from __future__ import annotations

from hf_transfer.diagnostics.advisor import Measurements, Thresholds, advise
from hf_transfer.methods import available_methods


def test_many_target_labels_train_on_the_target():
    advice = advise(Measurements(n_source=2000, n_target_unlabeled=5000, n_target_labeled=5000, mmd_p_value=0.005,
                                 pad=1.5))
    assert advice.method == "finetune"
    assert "source_data" in advice.settings
    assert "peft.peft_type" not in advice.settings  # 5,000 labelled rows: full fine-tuning


def test_a_learning_curve_at_plateau_counts_as_enough_labels():
    m = Measurements(n_source=2000, n_target_unlabeled=800, n_target_labeled=800, pad=1.5, mmd_p_value=0.01,
                     curve_ceiling=0.86, curve_accuracy_at_available=0.855)
    assert advise(m).method == "finetune" and "source_data" in advise(m).settings
    m.curve_accuracy_at_available = 0.80  # far from plateau: transfer from the source
    assert "source_data" not in advise(m).settings


def test_no_significant_gap_means_plain_finetuning():
    for p, pad in ((0.4, 0.6), (0.01, 0.1)):
        advice = advise(Measurements(n_source=2000, n_target_unlabeled=2000, mmd_p_value=p, pad=pad))
        assert advice.method == "finetune"
        assert "source_data" not in advice.settings
        assert "metric_for_best_model" not in advice.settings


def test_moderate_gap_reweights_and_large_gap_aligns():
    moderate = advise(Measurements(n_source=2000, n_target_unlabeled=2000, mmd_p_value=0.005, pad=0.6))
    assert moderate.method == "instance_weighting"
    assert moderate.settings["metric_for_best_model"] == "dev"  # no target labels to select checkpoints
    large = advise(Measurements(n_source=2000, n_target_unlabeled=2000, mmd_p_value=0.005, pad=1.9))
    assert large.method == "dann" and large.settings["dann.trade_off"] == 0.1
    small_source = advise(Measurements(n_source=300, n_target_unlabeled=2000, mmd_p_value=0.005, pad=1.9))
    assert small_source.method == "coral"
    assert small_source.settings["peft.peft_type"] == "LORA"  # 300 labelled rows


def test_gap_without_unlabelled_target_rows_cannot_adapt():
    assert advise(Measurements(n_source=2000, n_target_unlabeled=0, pad=1.9, mmd_p_value=0.001)).method == "finetune"


def test_best_model_by_logme_and_thresholds_are_configurable():
    m = Measurements(n_source=2000, n_target_unlabeled=2000, pad=0.6, mmd_p_value=0.001,
                     model_scores={"a": -0.7, "b": -0.5})
    assert advise(m).settings["model_name_or_path"] == "b"
    assert advise(m, Thresholds(large_gap_pad=0.5)).method == "dann"


def test_every_recommendation_is_a_registered_method_and_the_table_says_why():
    cases = [Measurements(n_source=n, n_target_unlabeled=u, n_target_labeled=lab, pad=pad, mmd_p_value=p)
             for n in (100, 5000) for u in (0, 3000) for lab in (0, 50, 3000) for pad in (None, 0.05, 0.7, 1.8)
             for p in (None, 0.001, 0.5)]
    for m in cases:
        advice = advise(m)
        assert advice.method in available_methods()
        table = advice.table()
        assert table.count("\n") == len(advice.reasons) + 2
        assert f"method `{advice.method}`" in table
