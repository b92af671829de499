"""Fixtures for image tests: tiny random ViT / ResNet folders (built from a config, no download) and small digit
tables cut from ../shared/data/digits, as a .npz and as an imagefolder of PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

DIGITS = SHARED_DATA / "digits" / "mnist_usps_16x16.npz"


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> str:
    """60 MNIST and 40 USPS digits (every class present) in the layout of the shared file."""
    z = np.load(DIGITS)
    rng = np.random.default_rng(0)
    out = {}
    for name, n in (("mnist", 60), ("usps", 40)):
        y = z[f"{name}_y"]
        # n // 10 of each class, so every label is there even in a small cut
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), n // 10, replace=False) for c in range(10)])
        out[f"{name}_x"], out[f"{name}_y"] = z[f"{name}_x"][idx], y[idx]
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, **out)
    return str(path)


def _save_processor(folder: Path, size: int) -> None:
    from transformers import ViTImageProcessorPil

    ViTImageProcessorPil(size={"height": size, "width": size}).save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide ViT for 32x32 images (patch 8) with random weights and a ViT image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    ViTForImageClassification(config).save_pretrained(folder)
    _save_processor(folder, 32)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory) -> str:
    """A two-stage, 16-wide ResNet with random weights (batch norm included) and a 32x32 image processor."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    folder = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetForImageClassification(config).save_pretrained(folder)
    _save_processor(folder, 32)
    return str(folder)


@pytest.fixture
def image_recipe(digits_npz, tmp_path) -> dict:
    """MNIST -> USPS on the small digit cut; tests set the model and what they exercise."""
    return {
        "image_column": "image",
        "source_data": digits_npz,
        "source_config": "mnist",
        "target_data": digits_npz,
        "target_config": "usps",
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "logging_steps": 1,
        "use_cpu": True,
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
        "report_to": "none",
        "selection_validators": ["none"],
    }
