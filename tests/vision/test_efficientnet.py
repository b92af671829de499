"""EfficientNet-Lite0: the packaged ImageNet weights, save / reload through the Auto classes, and the shipped recipes
on a digit set that is not in ../shared/data (printed digits rendered to an imagefolder of PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import hf_transfer
from hf_transfer.vision.efficientnet import (
    EfficientNetLiteConfig,
    EfficientNetLiteForImageClassification,
    convert_state_dict,
    image_processor_for,
    packaged_efficientnet_lite0,
    packaged_weights_file,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "image_classification"


def test_packaged_folder_holds_exactly_the_pth_weights():
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(packaged_efficientnet_lite0())
    assert isinstance(model, EfficientNetLiteForImageClassification) and model.config.num_labels == 1000
    reference = torch.load(packaged_weights_file(), map_location="cpu", weights_only=True)
    expected = convert_state_dict(reference, with_imagenet_head=True)
    state = model.state_dict()
    assert set(expected) == set(state)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    # ImageNet batch-norm statistics are real (not the 0 / 1 of a fresh layer)
    assert state["efficientnet.stem_bn.running_var"].std() > 0


def test_save_and_reload_with_hidden_layer(tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    torch.manual_seed(0)
    config = EfficientNetLiteConfig(num_labels=3, image_size=32, classifier_hidden_size=8,
                                    id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model = EfficientNetLiteForImageClassification(config).eval()
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "ReLU", "Dropout", "Linear"]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and {m.momentum for m in norms} == {0.1}  # not the package's TF-style 0.01 (see the config)
    model.save_pretrained(tmp_path)
    image_processor_for(32).save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reloaded(x).logits)
        out = model(x, labels=torch.tensor([0, 2]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))
    predictions = pipeline("image-classification", model=str(tmp_path))(Image.new("L", (16, 16), 128))
    assert {p["label"] for p in predictions} == {"a", "b", "c"}


def _printed_digits(root: Path, n: int, seed: int) -> str:
    """Digits 0-9 drawn with PIL's own font at random offsets, grey on black, as root/<digit>/<i>.png."""
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default()
    for i in range(n):
        digit = i % 10
        image = Image.new("L", (16, 16), 0)
        ImageDraw.Draw(image).text((int(rng.integers(1, 8)), int(rng.integers(0, 4))), str(digit),
                                   fill=int(rng.integers(150, 256)), font=font)
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        image.save(root / str(digit) / f"{i:04d}.png")
    return str(root)


@pytest.mark.parametrize("recipe", ["linear_probe.yaml", pytest.param("dann.yaml", marks=pytest.mark.slow)])
def test_shipped_recipe_runs_on_an_imagefolder_of_pngs(recipe, tmp_path):
    source = _printed_digits(tmp_path / "printed_a", 30, seed=0)
    target = _printed_digits(tmp_path / "printed_b", 20, seed=1)
    result = hf_transfer.train(
        str(RECIPES / recipe),
        source_data=source, source_config=None, target_data=target, target_config=None,
        image_size=32, max_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=16,
        output_dir=str(tmp_path / "out"), selection_validators=["none"], disable_tqdm=True, report_to="none",
        use_cpu=True,
    )
    assert result.metrics["train_steps"] == 1 and 0 <= result.metrics["target_accuracy"] <= 1
    config = result.model.config
    assert config.model_type == "hf_transfer_efficientnet_lite" and config.image_size == 32
    assert config.id2label == {i: str(i) for i in range(10)}  # imagefolder class names
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(result.output_dir)
    processor = AutoImageProcessor.from_pretrained(result.output_dir)
    assert processor.size == {"height": 32, "width": 32}
    if recipe == "linear_probe.yaml":
        assert reloaded.config.classifier_hidden_size == 256
