"""What every collator of the package shares: the model-input columns, the prefix of paired target columns, and
the labels / domain / weight columns of a batch of source rows followed by target rows.

A leaf (torch only), so that the text collators (:mod:`hf_transfer.data`) and the image collator
(:mod:`hf_transfer.vision.data`) use one definition without importing each other.
"""

from __future__ import annotations

from typing import Any

import torch

# Columns that carry a model input: token ids for text; the (undecoded) image before collation and the processed
# pixels after it for images (see hf_transfer/vision/data.py); log-mel features (Whisper) or samples (wav2vec2) for
# audio.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "image", "pixel_values", "input_features",
                    "input_values")
TARGET_PREFIX = "target_"


def add_batch_labels(batch: dict[str, Any], rows: list[dict[str, Any]], *, num_target: int) -> dict[str, Any]:
    """Add ``labels`` (target rows -100), ``domain`` (0 source, 1 target; only when there are target rows) and
    ``sample_weight`` (target rows 0) to a batch whose inputs hold the ``rows`` first, then ``num_target`` target
    rows."""
    if "labels" in rows[0]:
        batch["labels"] = torch.tensor([r["labels"] for r in rows] + [-100] * num_target, dtype=torch.long)
    if num_target:
        batch["domain"] = torch.tensor([0] * len(rows) + [1] * num_target, dtype=torch.long)
    if "sample_weight" in rows[0]:
        weights = [float(r["sample_weight"]) for r in rows] + [0.0] * num_target
        batch["sample_weight"] = torch.tensor(weights, dtype=torch.float32)
    return batch
