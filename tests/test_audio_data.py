"""Audio data: the layouts a recipe may name, decoding without FFmpeg, resampling, the Whisper window.

Synthetic tones written as 8 kHz WAV files with soundfile (the model's rate is 16 kHz, so every test resamples) and a
tiny random Whisper built from a config (16 mel bins; its feature extractor matches)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from hf_transfer.audio.data import decode_audio, load_clip, read_audio_folder, resample
from hf_transfer.errors import DataError, RecipeError

RATE = 8000
MEL_BINS = 16


def tone(freq: float, *, seconds: float = 0.5, rate: int = RATE, seed: int = 0, noise: float = 0.02,
         amplitude: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + noise * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_tones(folder: Path, *, per_class: int = 12, seed: int = 0, amplitude: float = 0.5,
                layout: str = "table") -> Path:
    """Two classes, ``low`` (440 Hz) and ``high`` (880 Hz), as WAV clips of 0.3-0.7 s, under ``folder`` in one of the
    layouts: ``table`` (``folder/clips.csv`` with ``audio`` paths relative to it), ``metadata``
    (``folder/metadata.csv`` with ``file_name``) or ``classes`` (``folder/<class>/<n>.wav``). Returns what a recipe
    names: the table file or the folder."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    rows = []
    for label, freq in (("low", 440.0), ("high", 880.0)):
        for i in range(per_class):
            sub = label if layout == "classes" else "clips"
            path = folder / sub / f"{label}_{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            wave = tone(freq * rng.uniform(0.97, 1.03), seconds=rng.uniform(0.3, 0.7), seed=int(rng.integers(1e9)),
                        amplitude=amplitude)
            sf.write(path, wave, RATE, subtype="PCM_16")
            rows.append((str(path.relative_to(folder)), label))
    if layout == "classes":
        return folder
    import pandas as pd

    name, column = ("metadata.csv", "file_name") if layout == "metadata" else ("clips.csv", "audio")
    pd.DataFrame({column: [r[0] for r in rows], "label": [r[1] for r in rows]}).to_csv(folder / name, index=False)
    return folder if layout == "metadata" else folder / name


def save_tiny_whisper(folder: Path) -> str:
    """A 2-layer, 32-wide random Whisper audio classifier (full 30 s window: 1500 positions) and its feature
    extractor (16 mel bins, 16 kHz)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    torch.manual_seed(0)
    config = WhisperConfig(num_mel_bins=MEL_BINS, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                           vocab_size=100, max_source_positions=1500, classifier_proj_size=16)
    WhisperForAudioClassification(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> str:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


def _data_args(**fields):
    from hf_transfer.recipe import DataArguments

    return DataArguments(**{"task": "audio-classification", "target_data": None, **fields})


# ---- decoding and resampling -------------------------------------------------------------------------------------


def test_resampling_keeps_a_tones_frequency_and_duration():
    wave = tone(1000.0, seconds=1.0, noise=0.0)
    out = resample(wave, 8000, 16000)
    assert out.size == 16000 and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak_hz = np.argmax(spectrum) * 16000 / out.size
    assert peak_hz == pytest.approx(1000.0, abs=1.0)  # one FFT bin is 1 Hz here
    # the anti-aliasing filter keeps the tone's amplitude (RMS of a 0.5-amplitude sine: 0.354)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    # and downsampling 44.1 kHz -> 16 kHz (a ratio of 160/441) keeps it too
    down = resample(tone(1000.0, seconds=1.0, rate=44100, noise=0.0), 44100, 16000)
    assert down.size == 16000
    assert np.argmax(np.abs(np.fft.rfft(down * np.hanning(down.size)))) == 1000


def test_stereo_is_mixed_to_mono_and_bytes_decode(tmp_path):
    import soundfile as sf

    left, right = tone(440, noise=0.0), tone(440, noise=0.0, seed=1)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    samples, rate = decode_audio(str(tmp_path / "s.wav"), where="t")
    assert rate == RATE and samples.ndim == 1
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-6)
    from_bytes, _ = decode_audio({"bytes": (tmp_path / "s.wav").read_bytes(), "path": "s.wav"}, where="t")
    np.testing.assert_array_equal(from_bytes, samples)


def test_a_file_that_does_not_decode_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(DataError) as err:
        load_clip(str(bad), 16000, where="source_data row 3")
    message = str(err.value)
    assert "\n" not in message and "broken.wav" in message and "source_data row 3" in message


# ---- layouts -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["table", "metadata", "classes"])
def test_every_layout_reads_the_same_clips_and_labels(tmp_path, layout):
    from hf_transfer.tasks import get_task

    spec = write_tones(tmp_path / layout, per_class=3, layout=layout)
    table = get_task("audio-classification").read_table(str(spec), _data_args(), field="source_data")
    assert len(table) == 6
    assert sorted(table["label"]) == ["high"] * 3 + ["low"] * 3
    for path, label in zip(table["audio"], table["label"]):
        assert Path(path).is_file() and Path(path).name.startswith(label)


def test_folder_with_loose_clips_and_no_metadata_is_refused(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", tone(440), RATE)
    with pytest.raises(DataError, match="sub-folder named after its class"):
        read_audio_folder(tmp_path, audio_column="audio", field="source_data")


def test_undecodable_clip_in_a_recipe_fails_before_the_model_loads(tmp_path, tiny_whisper_dir):
    import hf_transfer

    spec = write_tones(tmp_path / "d", per_class=3)
    (tmp_path / "d" / "clips" / "low_1.wav").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError) as err:
        hf_transfer.train({"task": "audio-classification", "model_name_or_path": str(tmp_path / "missing-model"),
                           "source_data": str(spec), "target_data": None, "output_dir": str(tmp_path / "out"),
                           "use_cpu": True, "report_to": "none"})
    assert "low_1.wav" in str(err.value) and "\n" not in str(err.value)


def test_hub_style_audio_column_is_decoded_without_torchcodec(tmp_path, tiny_whisper_dir):
    """A ``datasets.Audio`` column (as a Hub dataset has) is read as bytes and decoded with soundfile."""
    import datasets
    import soundfile as sf

    from hf_transfer.tasks import get_task

    paths = []
    for i, f in enumerate((440, 880)):
        sf.write(tmp_path / f"{i}.wav", tone(f), RATE)
        paths.append(str(tmp_path / f"{i}.wav"))
    table = datasets.Dataset.from_dict({"audio": paths, "labels": [0, 1]}).cast_column("audio", datasets.Audio())
    task, d = get_task("audio-classification"), _data_args(max_audio_seconds=1)
    model_args = types.SimpleNamespace(model_name_or_path=tiny_whisper_dir, revision=None, trust_remote_code=False)
    processor = task.load_processor(model_args, d)
    rows = task.process(table, processor, d)
    features = np.asarray(rows["input_features"])
    assert features.shape == (2, MEL_BINS, 100)  # 1 s at 16 kHz, hop 160: 100 frames
    # the same features as the feature extractor on the (16-bit) file read and resampled by hand
    samples, _ = sf.read(paths[1], dtype="float32")
    expected = processor(resample(samples, RATE, 16000), sampling_rate=16000, return_tensors="np")
    np.testing.assert_allclose(features[1], expected["input_features"][0], atol=1e-5)


# ---- the window --------------------------------------------------------------------------------------------------


def test_window_shortens_whisper_and_its_feature_extractor_together(tiny_whisper_dir, tmp_path):
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from hf_transfer.data import LabelSpace
    from hf_transfer.tasks import get_task

    task, d = get_task("audio-classification"), _data_args(max_audio_seconds=2)
    model_args = types.SimpleNamespace(model_name_or_path=tiny_whisper_dir, revision=None, trust_remote_code=False,
                                       classifier_hidden_size=None)
    processor = task.load_processor(model_args, d)
    assert (processor.chunk_length, processor.n_samples, processor.nb_max_frames) == (2, 32000, 200)
    model = task.build_model(model_args, d, LabelSpace(["a", "b"], from_strings=True))
    full = AutoModelForAudioClassification.from_pretrained(tiny_whisper_dir).encoder.embed_positions.weight
    assert model.config.max_source_positions == 100
    torch.testing.assert_close(model.encoder.embed_positions.weight, full[:100])
    # saved and reloaded with plain transformers, both keep the window, and a 0.4 s clip runs through
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    again = AutoModelForAudioClassification.from_pretrained(tmp_path / "m")
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path / "m")
    assert extractor.nb_max_frames == 200 and again.config.max_source_positions == 100
    inputs = extractor(np.zeros(6400, dtype=np.float32), sampling_rate=16000, return_tensors="pt")
    assert again(**inputs).logits.shape == (1, 2)
    with pytest.raises(RecipeError, match="longer than the model's window"):
        task.load_processor(model_args, _data_args(max_audio_seconds=31))


# ---- FSDD tables and the shipped recipes -------------------------------------------------------------------------


def test_fsdd_tables_label_each_clip_by_its_file_name(tmp_path):
    import pandas as pd
    import soundfile as sf

    from hf_transfer.audio.fsdd import write_fsdd_tables

    for speaker in ("ann", "bob"):
        for digit in (3, 7):
            (tmp_path / "fsdd" / speaker).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "fsdd" / speaker / f"{digit}_{speaker}_0.wav", tone(440), RATE)
    write_fsdd_tables(tmp_path / "fsdd", tmp_path / "tables")
    ann = pd.read_csv(tmp_path / "tables" / "ann.csv")
    assert ann["label"].tolist() == [3, 7] and set(ann["speaker"]) == {"ann"}
    others = pd.read_csv(tmp_path / "tables" / "without_ann.csv")
    assert set(others["speaker"]) == {"bob"}
    # paths are relative to the table, and the task reads them back to the files
    from hf_transfer.tasks import get_task

    table = get_task("audio-classification").read_table(str(tmp_path / "tables" / "ann.csv"), _data_args(),
                                                        field="source_data")
    assert [Path(p).resolve() for p in table["audio"]] == [
        (tmp_path / "fsdd" / "ann" / f"{d}_ann_0.wav").resolve() for d in (3, 7)]
    (tmp_path / "fsdd" / "bob" / "x.wav").write_bytes(b"")
    with pytest.raises(DataError, match="x.wav"):
        write_fsdd_tables(tmp_path / "fsdd", tmp_path / "tables")


@pytest.mark.parametrize("name", ["linear_probe", "finetune", "lora", "dann", "mmd"])
def test_shipped_recipes_parse(name):
    from hf_transfer.recipe import load_recipe

    repo = Path(__file__).resolve().parents[1]
    recipe = load_recipe(repo / "recipes" / "audio_classification" / f"{name}.yaml")
    assert recipe.data.task == "audio-classification" and recipe.data.max_audio_seconds == 1
    assert recipe.model.model_name_or_path == "openai/whisper-tiny.en"
    assert recipe.data.eval_data.endswith("nicolas.csv")
    assert (recipe.data.target_data is not None) == (name in ("dann", "mmd"))
