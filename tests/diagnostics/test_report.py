"""End to end on a tiny random model: ``diagnose()`` from Python and the CLI, the report's files, and the
before/after t-SNE that training runs write."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from hf_transfer.cli import main
from hf_transfer.diagnostics import diagnose
from hf_transfer.diagnostics.training_plot import ENABLE_ENV, PLOT_NAME

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_dir(tiny_model_dir, review_files, tmp_path_factory):
    """A tiny model trained for 2 steps; the run writes the before/after t-SNE beside it."""
    from hf_transfer import train

    out = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENABLE_ENV, "1")  # tests/conftest.py turns the picture off for every other training test
        train({
            "model_name_or_path": tiny_model_dir, "source_data": review_files["source"],
            "target_data": review_files["target"], "max_length": 32, "output_dir": str(out), "max_steps": 2,
            "per_device_train_batch_size": 8, "per_device_eval_batch_size": 32, "save_strategy": "no",
            "use_cpu": True, "disable_tqdm": True, "report_to": "none",
        })
    return out


def test_training_writes_the_before_after_tsne(trained_dir):
    png = trained_dir / PLOT_NAME
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert (trained_dir / "config.json").is_file()  # the model export is untouched


def test_after_plot_is_skipped_when_the_engine_shards_the_model(tmp_path):
    """Under FSDP with several processes a forward on the main process alone would wait forever for the others."""
    import types

    from hf_transfer.diagnostics.training_plot import finish_before_after_plot

    class Plot:
        def write(self, model, output_dir):
            raise AssertionError("a forward on the main process alone")

    accelerator = types.SimpleNamespace(num_processes=2)
    trainer = types.SimpleNamespace(is_world_process_zero=lambda: True, is_fsdp_enabled=True,
                                    is_deepspeed_enabled=False, accelerator=accelerator)
    with pytest.warns(UserWarning, match="the engine shards the model"):
        assert finish_before_after_plot(Plot(), trainer, tmp_path) is None


@pytest.fixture(scope="module")
def python_report(tiny_model_dir, review_files, trained_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = diagnose([review_files["source"], review_files["target"]], review_files["target"],
                      models=[tiny_model_dir], output_dir=out, max_samples=48, num_permutations=20,
                      trained_model=trained_dir, target_accuracy=0.9, max_length=32)
    return report, out


def test_diagnose_from_python_writes_report_json_and_pngs(python_report, tiny_model_dir, review_files):
    report, tmp_path = python_report
    r = json.loads((tmp_path / "diagnostics.json").read_text())
    model = tiny_model_dir
    books, kitchen = Path(review_files["source"]).stem, Path(review_files["target"]).stem
    d = r["distances"][model]
    assert d[books]["mmd_p_value"] >= 1 / 21 and 0 <= d[books]["pad"] <= 2
    # a source identical to the target: the same rows, so every distance is at its floor
    assert d[kitchen]["mmd2"] == pytest.approx(-1 / 47, abs=0.05) and d[kitchen]["pad"] == 0
    assert d[kitchen]["coral"] == pytest.approx(0, abs=1e-12)
    assert set(r["transferability"]["models"][model]) == {"logme", "hscore"}
    assert set(r["transferability"]["sources"][books]) == {"leep", "nce"}
    assert r["learning_curve"]["sizes"][-1] == 24
    assert {"tsne", "heatmap", "ranking", "curve"} <= set(r["images"])
    assert len(r["interpretability"]["token_attributions"]) >= 1
    assert r["advice"]["method"] == report.advice.method
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    assert not re.search(r"<script|<link|src=\"(?!data:)", html)  # self-contained: nothing loaded from elsewhere
    assert report.advice.method in html


def _coloured_fraction(png: Path) -> float:
    """Share of pixels with a saturated colour: the plots' markers, bars and colour maps (the page's own text and
    tables are black, white and grey)."""
    from matplotlib.image import imread

    rgb = imread(png)[..., :3]
    return float(((rgb.max(-1) - rgb.min(-1)) > 0.25).mean())


def test_report_screenshot_in_headless_chromium_shows_the_plots(python_report, tmp_path):
    from hf_transfer.diagnostics.browser import find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("no headless Chromium on this machine (apt-get install chromium)")
    _, out = python_report
    html = (out / "report.html").read_text()
    shot = screenshot(out / "report.html", tmp_path / "report.png", height=4000)
    # Control: the same page with every image removed renders no coloured pixels.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'<img [^>]*>', "", html))
    control = screenshot(bare, tmp_path / "bare.png", height=4000)
    assert _coloured_fraction(control) < 0.002
    assert _coloured_fraction(shot) > 0.02


def test_cli_diagnose_unlabelled_target(tiny_model_dir, review_files, tmp_path, capsys):
    code = main(["diagnose", "--source", review_files["source"], "--target", review_files["target"],
                 "--models", tiny_model_dir, "--output", str(tmp_path), "--max_samples", "40",
                 "--num_permutations", "10", "--unlabeled_target", "--max_length", "32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| **recommendation** |" in out
    r = json.loads((tmp_path / "diagnostics.json").read_text())
    assert r["target_labels_used"] is False and r["transferability"] == {"models": {}, "sources": {}}
    assert "learning_curve" not in r and r["measurements"]["n_target_labeled"] == 0
    assert (tmp_path / "tsne.png").is_file() and (tmp_path / "report.html").is_file()


def test_cli_diagnose_names_a_missing_file(tmp_path, capsys):
    code = main(["diagnose", "--source", str(tmp_path / "nope.jsonl"), "--target", str(tmp_path / "t.jsonl"),
                 "--output", str(tmp_path / "out")])
    assert code == 2
    assert "source: file" in capsys.readouterr().err


def test_diagnose_ranks_several_models_by_logme(tiny_model_dir, review_files, tmp_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    other = tmp_path / "tiny-16"
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=AutoTokenizer.from_pretrained(tiny_model_dir).vocab_size, hidden_size=16,
                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=128)).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    report = diagnose(review_files["source"], review_files["target"], models=[tiny_model_dir, str(other)],
                      max_samples=40, num_permutations=0, max_length=32, target_labeled_rows=0)
    r = report.results
    ranking = r["rankings"]["models_by_logme"]
    assert [m for m, _ in ranking] == sorted(r["models"], key=lambda m: -r["transferability"]["models"][m]["logme"])
    assert r["best_model"] == ranking[0][0] == report.advice.settings["model_name_or_path"]
    assert len(r["transferability"]["sources"]) == 2  # one LEEP/NCE entry per (source, model)
    assert r["measurements"]["n_target_labeled"] == 0
