"""The transfer methods on a tiny random Whisper audio classifier and synthetic tones (440 Hz vs 880 Hz).

The target domain is quieter and noisier than the source; every clip is written at 8 kHz, so every run resamples."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import hf_transfer
from hf_transfer.backbones import FeatureTap, find_feature_module, head_parameter_names, load_classifier
from tests.test_audio_data import save_tiny_whisper, write_tones


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory) -> str:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tones")
    return {"source": str(write_tones(root / "source", per_class=16, seed=1)),
            "target": str(write_tones(root / "target", per_class=10, seed=2, amplitude=0.2, layout="classes"))}


@pytest.fixture
def audio_recipe(tones, tiny_whisper_dir, tmp_path) -> dict:
    return {
        "task": "audio-classification",
        "model_name_or_path": tiny_whisper_dir,
        "source_data": tones["source"],
        "target_data": tones["target"],
        "max_audio_seconds": 1,
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32,
        "learning_rate": 3e-3,
        "save_strategy": "no",
        "logging_steps": 1,
        "use_cpu": True,
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
        "report_to": "none",
        "selection_validators": ["none"],
    }


def test_finetune_beats_chance_and_exports_a_plain_pipeline_model(audio_recipe):
    result = hf_transfer.train({**audio_recipe, "max_steps": 40, "source_eval_fraction": 0.0})
    # 20 target clips of two balanced classes: chance is 0.5
    assert result.metrics["target_accuracy"] >= 0.9
    out = result.output_dir
    config = json.loads((out / "config.json").read_text())
    extractor = json.loads((out / "preprocessor_config.json").read_text())
    assert config["max_source_positions"] == 50 and extractor["chunk_length"] == 1
    card = (out / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and 'pipeline("audio-classification"' in card
    # `hf-transfer evaluate` on the exported folder scores what the trainer measured on the same target clips
    from hf_transfer.audio.data import read_audio_folder

    columns = read_audio_folder(audio_recipe["target_data"], audio_column="audio", field="data")
    table = out.parent / "target.csv"
    pd.DataFrame(columns).to_csv(table, index=False)
    metrics = hf_transfer.evaluate(out, str(table), bootstrap_resamples=0)
    assert metrics["num_examples"] == 20
    assert metrics["accuracy"] == pytest.approx(result.metrics["target_accuracy"])
    # ... and reads a folder of class sub-folders as training does (clip paths resolved against the folder)
    from_folder = hf_transfer.evaluate(out, str(audio_recipe["target_data"]), bootstrap_resamples=0)
    assert from_folder["num_examples"] == 20
    assert from_folder["accuracy"] == pytest.approx(result.metrics["target_accuracy"])
    # A fresh interpreter with transformers alone (hf_transfer never imported) runs the export on a 16 kHz tone and
    # predicts what the trained model predicts.
    code = (
        "import sys, json, numpy as np\n"
        "from transformers import pipeline\n"
        f"classifier = pipeline('audio-classification', model={str(out)!r})\n"
        "t = np.arange(8000) / 16000\n"
        "out = [classifier({'raw': (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32), 'sampling_rate': 16000})[0]"
        "['label'] for f in (440, 880)]\n"
        "print(json.dumps({'labels': out, 'imported': 'hf_transfer' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"labels": ["low", "high"], "imported": False}


def test_linear_probe_trains_only_the_head(audio_recipe):
    before = load_classifier(audio_recipe["model_name_or_path"], num_labels=2,
                             auto_class=hf_transfer.tasks.get_task("audio-classification").auto_class()).state_dict()
    result = hf_transfer.train({**audio_recipe, "freeze_backbone": True, "target_data": None})
    after = result.model.state_dict()
    changed = {k for k in after if k in before and before[k].shape == after[k].shape
               and not torch.equal(before[k], after[k].cpu())}
    assert changed == {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}
    assert result.metrics["trainable_parameters"] == 32 * 16 + 16 + 16 * 2 + 2


def test_the_head_and_the_feature_methods_align(tiny_whisper_dir):
    """The backbone is the encoder; the feature DANN/MMD align is the pooled vector the classifier reads."""
    from transformers import AutoModelForAudioClassification

    model = load_classifier(tiny_whisper_dir, num_labels=3, auto_class=AutoModelForAudioClassification)
    assert sorted(head_parameter_names(model)) == ["classifier.bias", "classifier.weight", "projector.bias",
                                                   "projector.weight"]
    name, module = find_feature_module(model, 3)
    assert name == "classifier"
    tap = FeatureTap(module)
    features = torch.randn(4, 16, 3000)
    with torch.no_grad():
        logits = model(input_features=features).logits
        hidden = model.encoder(features).last_hidden_state
    pooled = tap.pop()
    torch.testing.assert_close(pooled, model.projector(hidden).mean(dim=1))  # projector, then mean over time
    torch.testing.assert_close(model.classifier(pooled), logits)
    tap.remove()


@pytest.mark.parametrize("method", ["dann", "mmd"])
def test_domain_adaptation_runs_on_unlabelled_target_clips(audio_recipe, method):
    result = hf_transfer.train({**audio_recipe, "method": [method], "max_steps": 3})
    assert result.metrics["train_steps"] == 3
    assert np.isfinite(result.metrics["train_loss"])
    assert 0.0 <= result.metrics["target_accuracy"] <= 1.0


def test_lora_on_the_encoder_attention(audio_recipe):
    from transformers import AutoModelForAudioClassification

    result = hf_transfer.train({**audio_recipe, "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj",
                                                                                              "v_proj"]},
                                "merge_adapter": True, "max_steps": 3})
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "q_proj" in n for n in trainable)
    assert not any("fc1" in n or "conv1" in n for n in trainable)
    out = result.output_dir
    assert (out / "adapter_config.json").is_file()
    merged = AutoModelForAudioClassification.from_pretrained(out / "merged")
    assert merged.config.max_source_positions == 50
    card = (out / "README.md").read_text()
    assert "max_source_positions=extractor.nb_max_frames // 2" in card
    # the card's way to load the adapter: the base rebuilt at the adapter's window, then the adapter on it
    from peft import PeftConfig, PeftModel
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(out)
    id2label = merged.config.id2label
    base = AutoModelForAudioClassification.from_pretrained(
        PeftConfig.from_pretrained(out).base_model_name_or_path, id2label=id2label,
        label2id={n: i for i, n in id2label.items()}, max_source_positions=extractor.nb_max_frames // 2,
        ignore_mismatched_sizes=True)
    adapted = PeftModel.from_pretrained(base, out).eval()
    inputs = extractor(np.random.default_rng(0).standard_normal(12000).astype(np.float32), sampling_rate=16000,
                       return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, merged.eval()(**inputs).logits, atol=1e-4, rtol=1e-4)


def test_recipe_refusals_name_the_field(audio_recipe):
    from hf_transfer.errors import RecipeError

    with pytest.raises(RecipeError, match="max_audio_seconds"):
        hf_transfer.train({**audio_recipe, "max_audio_seconds": 0})
    with pytest.raises(RecipeError, match="streaming"):
        hf_transfer.train({**audio_recipe, "streaming": True})
    with pytest.raises(RecipeError, match="image_column"):
        hf_transfer.train({**audio_recipe, "image_column": "audio"})


def test_a_datasets_audio_column_trains_without_torchcodec(audio_recipe, tones):
    """A ``datasets.Dataset`` with an ``Audio`` column (what a Hub audio dataset loads as) goes through labels,
    subsets, checks and features undecoded by datasets: torchcodec is not installed here, and is never needed."""
    import datasets

    from hf_transfer.audio.data import read_audio_folder

    columns = read_audio_folder(tones["target"], audio_column="audio", field="source_data")
    table = datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())
    result = hf_transfer.train({**audio_recipe, "source_data": table, "target_data": None,
                                "max_source_samples": 16})
    assert result.metrics["train_steps"] == 2


def test_a_wav2vec2_type_model_trains_with_dann(audio_recipe, tmp_path):
    """Not only Whisper: a model whose feature extractor gives raw ``input_values`` (wav2vec2), each clip padded or
    cut to ``max_audio_seconds``."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, classifier_proj_size=8, vocab_size=10)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "w2v")
    result = hf_transfer.train({**audio_recipe, "model_name_or_path": str(tmp_path / "w2v"), "method": ["dann"],
                                "peft": {"r": 2, "target_modules": ["q_proj", "v_proj"]}})
    assert result.metrics["train_steps"] == 2 and np.isfinite(result.metrics["train_loss"])
    name, module = find_feature_module(result.model, 2)
    assert "classifier" in name and module.in_features == 8  # the pooled vector (projector, mean over time)
