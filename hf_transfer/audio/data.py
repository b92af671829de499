"""Audio clips as HF users lay them out, decoded without FFmpeg: soundfile (its bundled libsndfile) decodes WAV, FLAC,
OGG and MP3; SciPy's polyphase filter resamples to the model's rate; channels are averaged to mono.

Layouts a folder may have (``datasets``' ``audiofolder`` conventions):

* a ``metadata.csv`` (or ``metadata.jsonl`` / ``metadata.parquet``) with a ``file_name`` column, paths relative to
  the folder, and the label and any other columns beside it;
* class sub-folders, ``<folder>/<class>/<clip>.wav``: the label is the sub-folder's name.

A table file (CSV, JSON Lines, Parquet) names its clips in a path column, relative to the table's own folder; a Hub
dataset's ``Audio`` column is read undecoded (its bytes) and decoded here, so ``torchcodec`` is never needed.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

#: what soundfile reads (libsndfile >= 1.1: MP3 too)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au")
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def _name_of(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    return str(value)


def decode_audio(value: Any, *, where: str) -> tuple[np.ndarray, int]:
    """``(mono float32 samples, sampling rate)`` of one clip: a file path, a ``{"bytes", "path"}`` dict (an undecoded
    ``datasets.Audio`` value) or an ``{"array", "sampling_rate"}`` dict. A clip that does not decode is a one-line
    :class:`DataError` naming it and ``where`` it came from."""
    import soundfile as sf

    if isinstance(value, dict) and value.get("array") is not None:
        samples, rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    else:
        if isinstance(value, dict):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
        elif isinstance(value, (str, os.PathLike)):
            source = value
        else:
            raise DataError(f"{where}: expected an audio file path, got {type(value).__name__} {value!r:.60}")
        if source is None:
            raise DataError(f"{where}: an audio value with neither bytes nor a path")
        try:
            samples, rate = sf.read(source, dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError ... by format
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"{where}: cannot decode audio file {_name_of(value)!r} ({reason}); use WAV, FLAC, OGG "
                            "or MP3, or remove the row") from None
        samples = samples.mean(axis=1)  # mono: the average of the channels
    if samples.ndim != 1:
        samples = samples.reshape(samples.shape[0], -1).mean(axis=1)
    if samples.size == 0:
        raise DataError(f"{where}: audio file {_name_of(value)!r} holds no samples")
    return samples.astype(np.float32, copy=False), rate


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """``samples`` at ``target_rate``: SciPy's polyphase resampler (anti-aliasing FIR, exact rational ratio)."""
    if rate == target_rate:
        return samples
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target_rate))
    return resample_poly(samples, target_rate // g, rate // g).astype(np.float32)


def load_clip(value: Any, target_rate: int, *, where: str) -> np.ndarray:
    """One clip decoded, mixed to mono and resampled to ``target_rate``."""
    samples, rate = decode_audio(value, where=where)
    return resample(samples, rate, target_rate)


def check_clip(value: Any, *, where: str) -> None:
    """Fail early, naming the clip, when a file is missing or not audio (reads the header only)."""
    import soundfile as sf

    if isinstance(value, dict):
        return  # bytes from a Hub dataset: decoded (and checked) when the features are made
    if not isinstance(value, (str, os.PathLike)):
        raise DataError(f"{where}: expected an audio file path, got {type(value).__name__} {value!r:.60}")
    if not os.path.isfile(value):
        raise DataError(f"{where}: audio file {str(value)!r} does not exist; paths are relative to the table's folder")
    try:
        sf.info(value)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: cannot decode audio file {str(value)!r} ({reason}); use WAV, FLAC, OGG or MP3, "
                        "or remove the row") from None


def read_audio_folder(folder: str | os.PathLike, *, audio_column: str, field: str) -> dict[str, list]:
    """The columns of an audio folder (see the module docstring): ``{audio_column: [absolute paths], ...}`` with a
    ``label`` column from the sub-folder names, or the metadata file's columns."""
    import pandas as pd

    root = Path(folder)
    metadata = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if len(metadata) > 1:
        raise DataError(f"{field}: folder {str(root)!r} has {len(metadata)} metadata files "
                        f"({', '.join(m.name for m in metadata)}); keep one")
    if metadata:
        meta = metadata[0]
        readers = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}
        frame = readers[meta.suffix](meta)
        if "file_name" not in frame.columns:
            raise DataError(f"{field}: {str(meta)!r} has no file_name column (columns: {', '.join(frame.columns)}); "
                            "name each clip's path, relative to the folder, in file_name")
        columns = {c: frame[c].tolist() for c in frame.columns if c != "file_name"}
        columns[audio_column] = [str(root / str(name)) for name in frame["file_name"]]
        return columns
    clips = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    loose = [p for p in clips if p.parent == root]
    if not clips or loose:
        what = f"clips at its top level ({loose[0].name!r})" if loose else "no audio files"
        raise DataError(f"{field}: folder {str(root)!r} has {what}; put each clip in a sub-folder named after its "
                        "class, or list the clips in a metadata.csv (file_name, label)")
    return {audio_column: [str(p) for p in clips], "label": [p.relative_to(root).parts[0] for p in clips]}


def resolve_paths(values: list[Any], base: Path) -> list[Any]:
    """Relative clip paths of a table file, made absolute against the table's folder (others are kept)."""
    return [str(base / v) if isinstance(v, str) and not os.path.isabs(v) else v for v in values]


class AudioCollator:
    """Stack a batch of (possibly paired) rows of model inputs (``input_features`` for Whisper, each clip already
    padded or cut to the model's window), source rows first, then target rows, with ``labels`` (-100 for target
    rows), ``domain`` and ``sample_weight`` as :class:`~hf_transfer.data.TransferCollator` does for text.

    Args:
        input_names: the feature extractor's ``model_input_names`` present in the rows.
    """

    def __init__(self, input_names: list[str] | tuple[str, ...]):
        self.input_names = tuple(input_names)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from ..batching import TARGET_PREFIX, add_batch_labels

        names = [n for n in self.input_names if n in rows[0]]
        target = [r for r in rows if TARGET_PREFIX + names[0] in r]
        batch = {}
        for name in names:
            values = [r[name] for r in rows] + [r[TARGET_PREFIX + name] for r in target]
            batch[name] = torch.as_tensor(np.asarray(values, dtype=np.int64 if name == "attention_mask" else
                                                     np.float32))
        return add_batch_labels(batch, rows, num_target=len(target))
