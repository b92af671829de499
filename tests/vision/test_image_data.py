"""Image data: .npz tables, decoding (greyscale, 16-bit, arrays, broken files), imagefolder, collation, recipe
fields."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hf_transfer.data import TARGET_PREFIX, load_raw_data, load_table, pair_with_target, prepare_data
from hf_transfer.errors import DataError, RecipeError
from hf_transfer.recipe import load_recipe
from hf_transfer.vision.data import (
    IMAGE_KEY,
    ImageCollator,
    augment,
    augment_table,
    decode_image,
    load_npz,
    write_image_folder,
)

from .conftest import DIGITS


def test_npz_prefix_names_the_arrays(digits_npz):
    table = load_table(digits_npz, field="source_data", config="usps")
    z = np.load(digits_npz)
    assert table.column_names == ["image", "label"] and len(table) == 40
    assert table["label"] == z["usps_y"].tolist()
    first = decode_image(table.cast_column("image", table.features["image"].__class__(decode=False))[0]["image"],
                         where="row 0")
    # greyscale became RGB, pixel for pixel
    assert first.mode == "RGB" and first.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(first)[..., 0], z["usps_x"][0])
    np.testing.assert_array_equal(np.asarray(first)[..., 2], z["usps_x"][0])


def test_npz_without_matching_keys_lists_the_prefixes(digits_npz):
    with pytest.raises(DataError, match=r"source_config to one of \['mnist', 'usps'\]"):
        load_table(digits_npz, field="source_data")  # no prefix -> x / y, which this file does not have
    with pytest.raises(DataError, match="target_config"):
        load_npz(digits_npz, field="target_data", prefix="svhn")


def test_npz_rejects_feature_vectors(tmp_path):
    path = tmp_path / "features.npz"
    np.savez(path, x=np.zeros((5, 800), np.float32), y=np.arange(5))
    with pytest.raises(DataError, match=r"shape \(5, 800\).*not images"):
        load_npz(path, field="source_data")


def test_npz_float_images_in_unit_range_are_scaled(tmp_path):
    path = tmp_path / "float.npz"
    x = np.full((2, 4, 4, 3), 0.5, np.float32)
    np.savez(path, x=x, y=np.array([0, 1]))
    table = load_npz(path, field="source_data")
    image = table[0]["image"]
    assert np.asarray(image).max() == 128  # round(0.5 * 255)


def test_decode_image_modes():
    grey16 = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    rgb = decode_image(grey16, where="row 0")
    # 16-bit greyscale is rescaled by its own range (PIL's convert would clip everything above 255 to white)
    np.testing.assert_array_equal(np.asarray(rgb)[..., 0], [[0, 64], [128, 255]])
    rgba = decode_image(Image.new("RGBA", (3, 3), (10, 20, 30, 0)), where="row 1")
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (10, 20, 30)
    chw = decode_image(np.zeros((3, 5, 7), np.uint8), where="row 2")  # channels first
    assert chw.size == (7, 5)
    buffer = io.BytesIO()
    Image.new("L", (4, 4), 200).save(buffer, format="PNG")
    assert decode_image({"bytes": buffer.getvalue(), "path": None}, where="row 3").getpixel((0, 0)) == (200,) * 3


def test_undecodable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"row 7 \(.*broken\.png\): cannot decode"):
        decode_image({"bytes": None, "path": str(bad)}, where="row 7")


def test_imagefolder_with_a_broken_png_fails_before_training(tmp_path):
    z = np.load(DIGITS)
    root = write_image_folder(tmp_path / "digits", z["usps_x"][::90], z["usps_y"][::90], [str(i) for i in range(10)])
    some_class = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (some_class / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    recipe = load_recipe({"image_column": "image", "source_data": str(root), "target_data": None})
    with pytest.raises(DataError, match=r"image_column: source_data .* row \d+ \(.*zz_truncated\.png\)"):
        load_raw_data(recipe.data)


def test_imagefolder_labels_are_the_folder_names(tmp_path):
    z = np.load(DIGITS)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    root = write_image_folder(tmp_path / "digits", z["mnist_x"][::67], z["mnist_y"][::67], names)
    recipe = load_recipe({"image_column": "image", "source_data": str(root), "target_data": None})
    raw = load_raw_data(recipe.data)
    present = sorted({names[int(v)] for v in z["mnist_y"][::67]})
    assert raw.labels.names == present  # ClassLabel names from the folders, in sorted order
    assert len(raw.source) == 30


def test_collator_pairs_and_normalises(digits_npz):
    from transformers import ViTImageProcessorPil

    recipe = load_recipe({"image_column": "image", "source_data": digits_npz, "source_config": "mnist",
                          "target_data": digits_npz, "target_config": "usps", "source_eval_fraction": 0.0})
    raw = load_raw_data(recipe.data)
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    data = prepare_data(raw, processor, recipe.data)
    paired = pair_with_target(data.train, data.target, seed=0)
    assert set(paired.column_names) == {IMAGE_KEY, "labels", TARGET_PREFIX + IMAGE_KEY}
    rows = [paired[i] for i in range(4)]
    batch = ImageCollator(processor)(rows)
    assert batch["pixel_values"].shape == (8, 3, 16, 16)
    assert batch["labels"][:4].tolist() == [r["labels"] for r in rows] and batch["labels"][4:].tolist() == [-100] * 4
    assert batch["domain"].tolist() == [0] * 4 + [1] * 4
    # reference: (pixel / 255 - mean) / std, for the first target image at full size (no resize)
    target0 = np.asarray(decode_image(rows[0][TARGET_PREFIX + IMAGE_KEY], where="t"), dtype=np.float64)[..., 0]
    np.testing.assert_allclose(batch["pixel_values"][4, 0].numpy(), (target0 / 255 - 0.5) / 0.25, atol=1e-5)


def test_augmentations_keep_size_and_flip_exactly():
    rng = np.random.default_rng(0)
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    flipped = [augment(image, ["hflip"], rng) for _ in range(20)]
    mirrored = np.asarray(image)[:, ::-1]
    assert any(np.array_equal(np.asarray(f), mirrored) for f in flipped)
    assert all(np.array_equal(np.asarray(f), np.asarray(image)) or np.array_equal(np.asarray(f), mirrored)
               for f in flipped)
    shifted = augment(Image.new("RGB", (16, 16), (255, 255, 255)), ["shift", "brightness"], rng)
    assert shifted.size == (16, 16)


def test_augment_table_changes_only_training_images(digits_npz):
    table = load_npz(digits_npz, field="source_data", prefix="mnist").rename_column("label", "labels")
    augmented = augment_table(table, ["hflip"], seed=0)
    rows = [augmented[i] for i in range(10)]
    assert all(isinstance(r[IMAGE_KEY], Image.Image) and r["labels"] == table[i]["labels"] for i, r in enumerate(rows))


def test_recipe_image_fields_are_checked():
    with pytest.raises(RecipeError, match="image_augmentation: unknown value 'hflp'; did you mean 'hflip'"):
        load_recipe({"image_column": "image", "image_augmentation": ["hflp"]})
    with pytest.raises(RecipeError, match="set image_column"):
        load_recipe({"image_size": 64})
    with pytest.raises(RecipeError, match="classifier_hidden_size: must be > 0"):
        load_recipe({"classifier_hidden_size": 0})
    # `null` on the command line unsets an optional field, as in YAML (a .npz prefix, the target, the hidden layer)
    recipe = load_recipe({"image_column": "image", "source_config": "mnist", "classifier_hidden_size": 8},
                         ["--source_config", "null", "--target_data", "null", "--classifier_hidden_size", "null"])
    assert (recipe.data.source_config, recipe.data.target_data, recipe.model.classifier_hidden_size) == (None,) * 3


def test_missing_image_column_names_the_columns(digits_npz):
    recipe = load_recipe({"image_column": "img", "source_data": digits_npz, "source_config": "mnist",
                          "target_data": None})
    with pytest.raises(DataError, match="image_column: column 'img' is not in source_data .* image, label"):
        load_raw_data(recipe.data)
