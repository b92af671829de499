"""Audio classification: one class per clip, ``AutoModelForAudioClassification`` (docs/tasks.md, audio section).

Data is read as HF users lay it out (:mod:`hf_transfer.audio.data`): a folder of class sub-folders or with a
``metadata.csv`` (``file_name``, label), a table file with a path column (``audio_column``, paths relative to the
table's folder) and a label column, or a Hub dataset with an ``Audio`` column. Clips are decoded with soundfile (no
FFmpeg, no torchcodec), mixed to mono and resampled with SciPy to the feature extractor's rate; a clip that does not
decode is a one-line error naming it. The model's own feature extractor makes the inputs (Whisper: log-mel
``input_features``), once per clip, when the tables are prepared.

``max_audio_seconds`` pads or cuts every clip to a window. Whisper's encoder takes exactly its window (30 s, 1500
positions, as released); for short clips (spoken digits last about half a second) the model is built with the first
``50 * seconds`` positions of its table (``max_source_positions``) and its feature extractor saved with the matching
``chunk_length``, so a 1 s window costs a thirtieth of the full one, and the export still loads with plain
``transformers`` (``pipeline("audio-classification")`` pads or cuts to the same window).

The classifier (projector, mean over time, linear layer) reads one pooled vector per clip: the feature every method
(DANN, MMD ...) aligns is that vector, the input of the last linear layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DataError, RecipeError
from .base import Task
from .registry import register_task

#: PEFT target modules of a Whisper encoder's attention (LoRA on queries and values, as for text models)
WHISPER_LORA_TARGETS = ["q_proj", "v_proj"]


class AudioClassification(Task):
    """Single-label classification of an audio clip (``audio_column``)."""

    name = "audio-classification"
    pipeline_tag = "audio-classification"
    auto_class_name = "AutoModelForAudioClassification"
    # PEFT's sequence-classification wrapper passes `input_ids`; the plain PeftModel forwards `input_features`.
    peft_task_type = None
    supports_streaming = False
    # The before/after t-SNE embeds rows with a text collator.
    supports_feature_plot = False
    card_kind = "An audio"
    uses_tokens = False

    # ---- recipe ----------------------------------------------------------------------------------------------

    def check_data_args(self, d: Any) -> None:
        if d.image_column is not None:
            raise RecipeError(f"image_column: task {self.name} reads audio_column; drop image_column")
        if d.text_pair_column is not None:
            raise RecipeError(f"text_pair_column: task {self.name} reads one clip per row; drop text_pair_column")
        if d.image_size is not None or d.image_augmentation:
            raise RecipeError("image_size / image_augmentation: apply to images only; drop them for audio")
        if d.audio_column == d.label_column:
            raise RecipeError(f"label_column: is the same column as audio_column ({d.audio_column!r}); each must name "
                              "its own column")
        if d.max_audio_seconds is not None and d.max_audio_seconds < 1:
            raise RecipeError(f"max_audio_seconds: must be >= 1 second, got {d.max_audio_seconds}")
        if d.streaming:
            raise RecipeError("streaming: audio tables are read whole (clips are decoded once); set streaming: false")

    def check_recipe(self, *, data_args: Any, training_args: Any, methods: list[str], **_: Any) -> None:
        if training_args.train_sampling_strategy == "group_by_length":
            raise RecipeError("train_sampling_strategy: group_by_length needs text lengths; clips are padded to one "
                              "window. Use random")

    # ---- data ------------------------------------------------------------------------------------------------

    def read_table(self, spec: Any, d: Any, *, field: str, split: str = "train", config: str | None = None):
        """A folder (class sub-folders or ``metadata.csv``), a table file with a path column, or a Hub dataset; a
        list of them (``DataFiles``) is read one after the other."""
        import datasets

        specs = getattr(spec, "specs", None)
        if specs:
            return datasets.concatenate_datasets([self.read_table(s, d, field=field, split=split, config=config)
                                                  for s in specs])
        return _read_one(spec, d.audio_column, field=field, split=split, config=config)

    def input_columns(self, d: Any) -> list[tuple[str, str]]:
        return [(d.audio_column, "audio_column")]

    def check_inputs(self, table: Any, d: Any, *, field: str, spec: str) -> None:
        """Clips are checked once all tables are loaded (:meth:`check_loaded`)."""

    def check_loaded(self, tables: dict[str, tuple[Any, str]], d: Any) -> None:
        from ..audio.data import check_clip

        for field, (table, spec) in tables.items():  # every file's header is read once, to fail before the model
            if table is None or (field == "eval_data" and not d.eval_data):
                continue
            for i, value in enumerate(_undecoded(table, d.audio_column)[d.audio_column]):
                check_clip(value, where=f"{field} ({spec}) row {i}, audio_column {d.audio_column!r}")

    def load_processor(self, model_args: Any, d: Any):
        """The model's feature extractor, its window set to ``max_audio_seconds`` when given."""
        from transformers import AutoFeatureExtractor

        from ..backbones import _load_error, resolve_model_path

        try:
            processor = AutoFeatureExtractor.from_pretrained(
                resolve_model_path(model_args.model_name_or_path), revision=model_args.revision,
                trust_remote_code=model_args.trust_remote_code)
        except (OSError, ValueError) as err:
            raise _load_error(model_args.model_name_or_path, err) from None
        if d.max_audio_seconds is not None:
            set_window(processor, d.max_audio_seconds)
        elif not hasattr(processor, "n_samples"):
            raise RecipeError(f"max_audio_seconds: {type(processor).__name__} has no window of its own; set "
                              "max_audio_seconds (e.g. 2) so every clip is padded or cut to one length")
        return processor

    def process(self, table: Any, processor: Any, d: Any, *, keep: tuple[str, ...] = ("labels",),
                desc: str = "Extracting audio features"):
        """Each clip decoded, resampled and turned into the model's inputs (padded or cut to the window)."""
        from ..audio.data import load_clip

        column, rate = d.audio_column, processor.sampling_rate
        table = _undecoded(table, column)
        inputs = _input_names(processor)

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            clips = [load_clip(v, rate, where=f"{desc}: row {i}, audio_column {column!r}")
                     for i, v in zip(indices, batch[column])]
            out = extract(processor, clips, seconds=d.max_audio_seconds)
            return {name: list(out[name]) for name in inputs}

        drop = [c for c in table.column_names if c not in keep]
        return table.map(encode, batched=True, batch_size=64, with_indices=True, remove_columns=drop, desc=desc)

    def collator(self, processor: Any):
        from ..audio.data import AudioCollator

        return AudioCollator(_input_names(processor))

    # ---- model -----------------------------------------------------------------------------------------------

    def config_overrides(self, model_args: Any, d: Any) -> dict[str, Any]:
        if model_args.classifier_hidden_size is not None:
            raise RecipeError("classifier_hidden_size: image models (efficientnet-lite0) only; audio classifiers keep "
                              "their own head (Whisper: projector, mean over time, linear layer)")
        return {}

    def build_model(self, model_args: Any, d: Any, labels: Any):
        """The pretrained model with a new head; a Whisper encoder is shortened to the feature extractor's window."""
        model = super().build_model(model_args, d, labels)
        if getattr(model.config, "model_type", "") == "whisper":
            frames = self.load_processor(model_args, d).nb_max_frames
            shorten_whisper_encoder(model, frames)
        return model

    # ---- export and use --------------------------------------------------------------------------------------

    def card_fields(self, *, peft_type: str | None, hub_model_id: str | None, merged: bool = False,
                    id2label: dict[int, str] | None = None) -> dict[str, Any]:
        from ..cards import where

        model = where(hub_model_id)
        read = ("import soundfile as sf\nfrom scipy.signal import resample_poly\n"
                "samples, rate = sf.read(\"clip.wav\", dtype=\"float32\", always_2d=True)  # decode without FFmpeg\n"
                "samples = resample_poly(samples.mean(axis=1), 16000, rate)  # mono, at the feature extractor's "
                "rate (Whisper: 16 kHz)\n")
        if not peft_type:
            code = (read + "from transformers import pipeline\n"
                    f"classifier = pipeline(\"audio-classification\", model={model})\n"
                    "classifier({\"raw\": samples, \"sampling_rate\": 16000})")
        else:
            labels = {int(k): v for k, v in (id2label or {}).items()}
            code = (read + "from peft import PeftConfig, PeftModel\n"
                    "from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification, "
                    "pipeline\n"
                    f"id2label = {labels!r}\n"
                    f"config = PeftConfig.from_pretrained({model})\n"
                    f"extractor = AutoFeatureExtractor.from_pretrained({model})\n"
                    "# the adapter was trained on a window of extractor.nb_max_frames frames (Whisper: half as many "
                    "positions)\n"
                    "base = AutoModelForAudioClassification.from_pretrained(config.base_model_name_or_path, "
                    "id2label=id2label, label2id={n: i for i, n in id2label.items()}, "
                    "max_source_positions=extractor.nb_max_frames // 2, ignore_mismatched_sizes=True)\n"
                    f"model = PeftModel.from_pretrained(base, {model})\n"
                    "classifier = pipeline(\"audio-classification\", model=model.merge_and_unload(), "
                    "feature_extractor=extractor)\n"
                    "classifier({\"raw\": samples, \"sampling_rate\": 16000})")
        usage = f"```python\n{code}\n```"
        if peft_type and merged:
            usage += ("\n\nThe adapter merged into the base model is in `merged/`, a plain model that `pipeline"
                      "(\"audio-classification\", model=...)` loads.")
        return {"pipeline_tag": self.pipeline_tag, "kind": self.card_kind, "usage": usage}

    def load_processor_from_folder(self, path: str):
        from transformers import AutoFeatureExtractor

        return AutoFeatureExtractor.from_pretrained(path)

    def evaluation_columns(self, settings: Any) -> list[tuple[str, str]]:
        return [(getattr(settings, "audio_column", None) or "audio", "audio_column")]

    def read_evaluation_table(self, spec: Any, settings: Any, *, split: str = "train", config: str | None = None):
        """The evaluated table read as training reads it: folders of class sub-folders or with a metadata file, and
        a table's relative clip paths resolved against the table's own folder."""
        column = getattr(settings, "audio_column", None) or "audio"
        return _read_one(spec, column, field="data", split=split, config=config)

    def evaluation_inputs(self, table: Any, processor: Any, settings: Any):
        """Model inputs of the evaluated rows (clip paths already resolved by :meth:`read_evaluation_table`)."""
        from ..audio.data import AudioCollator, load_clip

        column = getattr(settings, "audio_column", None) or "audio"
        values = _undecoded(table, column)[column]
        collate, names = AudioCollator(_input_names(processor)), _input_names(processor)

        def batch_inputs(start: int, stop: int) -> dict[str, Any]:
            clips = [load_clip(values[i], processor.sampling_rate, where=f"data row {i}") for i in range(start, stop)]
            out = extract(processor, clips, seconds=None)
            return collate([{n: out[n][j] for n in names} for j in range(len(clips))])

        return batch_inputs


# ---- helpers -----------------------------------------------------------------------------------------------------


def _input_names(processor: Any) -> list[str]:
    return [n for n in processor.model_input_names if n != "attention_mask"] or ["input_features"]


def _undecoded(table: Any, column: str):
    """A Hub ``Audio`` column read as bytes (decoded here with soundfile, so torchcodec is never needed)."""
    from datasets import Audio

    if column in table.column_names and isinstance(table.features[column], Audio) and table.features[column].decode:
        return table.cast_column(column, Audio(decode=False))
    return table


def set_window(processor: Any, seconds: int) -> None:
    """Pad or cut clips to ``seconds``: a Whisper feature extractor's ``chunk_length`` (and the sample and frame
    counts it implies), no longer than its own window (the model has no positions beyond it)."""
    window = getattr(processor, "chunk_length", None)
    if window is None:
        processor.hf_transfer_max_samples = int(seconds * processor.sampling_rate)
        return
    if seconds > window:
        raise RecipeError(f"max_audio_seconds: {seconds} s is longer than the model's window ({window} s); set it to "
                          f"at most {window}")
    processor.chunk_length = int(seconds)
    processor.n_samples = int(seconds) * processor.sampling_rate
    processor.nb_max_frames = processor.n_samples // processor.hop_length


def extract(processor: Any, clips: list, *, seconds: int | None) -> dict[str, Any]:
    """The model inputs of ``clips`` (mono, at the processor's rate), each padded or cut to one window."""
    kwargs: dict[str, Any] = {"sampling_rate": processor.sampling_rate, "return_tensors": "np"}
    if not hasattr(processor, "n_samples"):  # e.g. wav2vec2-type extractors: pad or cut to max_audio_seconds
        length = getattr(processor, "hf_transfer_max_samples", None) or int((seconds or 1) * processor.sampling_rate)
        kwargs.update(padding="max_length", max_length=length, truncation=True)
    return processor(clips, **kwargs)


def shorten_whisper_encoder(model: Any, frames: int) -> None:
    """Keep the first ``frames // 2`` positions of a Whisper encoder (its convolutions halve the frames), so that it
    takes ``frames`` log-mel frames; the config's ``max_source_positions`` is saved with it, so ``from_pretrained``
    rebuilds the same shape."""
    import torch
    from torch import nn

    encoder = model.encoder
    positions = frames // 2
    if frames % 2 or positions < 1:
        raise RecipeError(f"max_audio_seconds: gives {frames} log-mel frames; Whisper needs an even number")
    table = encoder.embed_positions.weight
    if positions > table.shape[0]:
        raise RecipeError(f"max_audio_seconds: needs {positions} positions; the model has {table.shape[0]}")
    if positions == table.shape[0]:
        return
    short = nn.Embedding(positions, table.shape[1], device=table.device, dtype=table.dtype)
    with torch.no_grad():
        short.weight.copy_(table[:positions])
    short.requires_grad_(False)  # fixed sinusoids in Whisper, never trained
    encoder.embed_positions = short
    encoder.max_source_positions = positions
    model.config.max_source_positions = positions


def _read_one(spec: Any, audio_column: str, *, field: str, split: str, config: str | None):
    import datasets

    from ..audio.data import read_audio_folder, resolve_paths
    from ..data import load_table

    path = Path(os.path.expanduser(str(spec))) if isinstance(spec, str) else None
    if path is not None and path.is_dir():
        return datasets.Dataset.from_dict(read_audio_folder(path, audio_column=audio_column, field=field))
    # A Hub `Audio` column stays undecoded from here on: labels, subsets and checks never need torchcodec.
    table = _undecoded(load_table(spec, field=field, split=split, config=config), audio_column)
    if path is not None and path.is_file() and audio_column in table.column_names:
        values = table[audio_column]
        if values and not all(isinstance(v, str) for v in values):
            bad = next(i for i, v in enumerate(values) if not isinstance(v, str))
            raise DataError(f"{field}: {str(spec)!r} row {bad}: audio_column {audio_column!r} should hold a file "
                            f"path, got {type(values[bad]).__name__}")
        table = table.remove_columns(audio_column).add_column(audio_column, resolve_paths(values, path.parent))
    return table


register_task(AudioClassification)
