"""Image data without torchvision: ``.npz`` arrays as datasets, decoding with clear errors, augmentation, collation.

Images reach the model as PIL images converted to RGB (greyscale, palette, 16-bit and RGBA inputs included) and go
through the model's own image processor (resize, rescale, normalise) in :class:`ImageCollator`, one batch at a time,
so nothing large is cached on disk. Every table keeps its images undecoded (``datasets.Image(decode=False)``): they are
decoded here, where a bad file can be named.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageEnhance, UnidentifiedImageError

from ..errors import DataError

#: The column every prepared image table uses (``target_image`` for the paired target rows).
IMAGE_KEY = "image"
AUGMENTATIONS = ("hflip", "shift", "brightness")


# ---------------------------------------------------------------------------------------------------------------
# .npz arrays
# ---------------------------------------------------------------------------------------------------------------


def npz_keys(prefix: str | None) -> tuple[str, str]:
    """``(images key, labels key)``: ``x``/``y``, or ``<prefix>_x``/``<prefix>_y``."""
    return (f"{prefix}_x", f"{prefix}_y") if prefix else ("x", "y")


def load_npz(path: str | os.PathLike, *, field: str, prefix: str | None = None) -> Dataset:
    """An image table (columns ``image``, ``label``) from a NumPy ``.npz`` file.

    Args:
        path: the ``.npz`` file (read with ``allow_pickle=False``).
        field: the recipe field it came from, for error messages (``"source_data"``).
        prefix: the key prefix (the recipe's ``*_config``): ``mnist`` reads ``mnist_x`` / ``mnist_y``; ``None`` reads
            ``x`` / ``y``. Images are ``(n, H, W)`` (grey) or ``(n, H, W, C)`` with C in 1, 3, 4; uint8, or floats
            in [0, 1] or [0, 255]. Labels are ``(n,)`` integer class ids.
    """
    config_field = field.replace("_data", "_config")
    x_key, y_key = npz_keys(prefix)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = list(arrays.keys())
            if x_key not in keys or y_key not in keys:
                prefixes = sorted(k[:-2] for k in keys if k.endswith("_x") and f"{k[:-2]}_y" in keys)
                fix = (f"set {config_field} to one of {prefixes}" if prefixes
                       else f"it needs arrays named {x_key!r} and {y_key!r}")
                raise DataError(f"{field}: {str(path)!r} has no {x_key!r}/{y_key!r} arrays (keys: {keys}); {fix}")
            x, y = arrays[x_key], arrays[y_key]
    except DataError:
        raise
    except (OSError, ValueError) as err:
        raise DataError(f"{field}: cannot read {str(path)!r} as a .npz file: {err}") from None
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (3, 4))):
        raise DataError(
            f"{field}: {x_key!r} in {str(path)!r} has shape {x.shape}; images must be (n, H, W) or (n, H, W, 3|4) "
            "(feature vectors are not images)"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{field}: {y_key!r} in {str(path)!r} has shape {y.shape}; expected ({len(x)},) labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{field}: {y_key!r} in {str(path)!r} is {y.dtype}; labels must be integer class ids")
    if len(x) == 0:
        raise DataError(f"{field}: {str(path)!r} has no rows under {x_key!r}")
    encoded = [{"bytes": _png_bytes(array_to_pil(img, where=f"{field} row {i}")), "path": None}
               for i, img in enumerate(x)]
    features = Features({IMAGE_KEY: ImageFeature(), "label": Value("int64")})
    return Dataset.from_dict({IMAGE_KEY: encoded, "label": y.astype(np.int64).tolist()}, features=features)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------


def array_to_pil(array: Any, *, where: str) -> Image.Image:
    """A NumPy array (H, W), (H, W, 1|3|4) or channels-first (1|3, H, W) to a PIL image. Floats in [0, 1] are
    scaled to [0, 255]; anything else is clipped to [0, 255]."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or a.size == 0:
        raise DataError(f"{where}: an array of shape {a.shape} is not an image; expected (H, W) or (H, W, 3|4)")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
    return Image.fromarray(a)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, whatever the mode: greyscale and palette images are expanded, alpha is dropped, 16-bit and float
    greyscale are rescaled to 8 bits by their own range (PIL would clip them)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        image = Image.fromarray(a.round().astype(np.uint8))
    return image.convert("RGB")


def decode_image(value: Any, *, where: str) -> Image.Image:
    """Any stored image (a PIL image, ``{"bytes", "path"}`` from ``datasets.Image``, raw bytes, a file path, or an
    array) as a loaded RGB PIL image. Raises a DataError naming ``where`` (and the file, if there is one), also for
    an image larger than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""
    path = None
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that (and raises above): refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(value, Image.Image):
                image = value
            elif isinstance(value, dict) and ("bytes" in value or "path" in value):
                path = value.get("path")
                data = value.get("bytes")
                image = Image.open(io.BytesIO(data)) if data else Image.open(path) if path else None
                if image is None:
                    raise DataError(f"{where}: the image is empty (no bytes and no path)")
            elif isinstance(value, (bytes, bytearray)):
                image = Image.open(io.BytesIO(value))
            elif isinstance(value, (str, os.PathLike)):
                path = str(value)
                image = Image.open(path)
            elif value is None:
                raise DataError(f"{where}: the image is missing (null)")
            else:
                image = array_to_pil(value, where=where)
            image.load()
            return to_rgb(image)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        name = f" ({path})" if path else ""
        cause = str(err).split(", could be")[0]
        raise DataError(f"{where}{name}: refused as a possible decompression bomb ({cause}); shrink the image, or "
                        "raise PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        name = f" ({path})" if path else ""
        raise DataError(f"{where}{name}: cannot decode the image: {err}") from None


def check_images(table: Dataset, column: str, *, field: str, spec: str) -> None:
    """Decode every image of ``table[column]`` once, so a broken file fails here, before a model is loaded, with its
    row and path. (Costs one decode per image: a few seconds per 10,000 small images.)"""
    undecoded = _undecoded(table, column).select_columns([column])
    row = 0
    for batch in undecoded.iter(batch_size=1000):  # a chunk at a time: large tables need not fit in memory
        for value in batch[column]:
            decode_image(value, where=f"image_column: {field} ({spec!r}) row {row}")
            row += 1


def _undecoded(table: Dataset, column: str) -> Dataset:
    feature = table.features[column]
    if isinstance(feature, ImageFeature) and feature.decode:
        return table.cast_column(column, ImageFeature(decode=False))
    return table


def select_image_column(table: Dataset, column: str, *, keep: tuple[str, ...] = ("labels",)) -> Dataset:
    """The prepared table: the images (kept undecoded) under :data:`IMAGE_KEY`, plus the ``keep`` columns."""
    table = _undecoded(table, column)
    table = table.select_columns([column, *[c for c in keep if c in table.column_names and c != column]])
    return table.rename_column(column, IMAGE_KEY) if column != IMAGE_KEY else table


# ---------------------------------------------------------------------------------------------------------------
# Augmentation and collation
# ---------------------------------------------------------------------------------------------------------------


def augment(image: Image.Image, names: tuple[str, ...] | list[str], rng: np.random.Generator) -> Image.Image:
    """Random ``hflip`` (p = 0.5), ``shift`` (translate by up to 1/8 of each side, zero fill) and ``brightness``
    (factor in [0.8, 1.2]) of one RGB image."""
    if "hflip" in names and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if "shift" in names:
        w, h = image.size
        dx, dy = (int(rng.integers(-(s // 8), s // 8 + 1)) for s in (w, h))
        image = image.rotate(0, translate=(dx, dy), fillcolor=(0, 0, 0))
    if "brightness" in names:
        image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
    return image


def augment_table(table: Dataset, names: tuple[str, ...] | list[str], *, seed: int) -> Dataset:
    """``table`` (the training rows only) with its :data:`IMAGE_KEY` images decoded and randomly augmented each time
    a row is read (``Dataset.with_transform``); other columns, target images included, pass through unchanged."""
    names = tuple(names)
    if not names:
        return table
    rng = np.random.default_rng(seed)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        images = [decode_image(v, where="image_column: training row") for v in batch[IMAGE_KEY]]
        return {**batch, IMAGE_KEY: [augment(img, names, rng) for img in images]}

    return table.with_transform(transform)


class ImageCollator:
    """Turn a batch of (possibly paired) image rows into one model batch: ``pixel_values`` from the model's image
    processor, source rows first, then target rows, with ``labels`` (-100 for target rows), ``domain`` and
    ``sample_weight`` as :class:`~hf_transfer.data.TransferCollator` does for text.

    Args:
        image_processor: the model's (``AutoImageProcessor``); any processor returning ``pixel_values``.
    """

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def pixel_values(self, values: list[Any]) -> torch.Tensor:
        images = [decode_image(v, where=f"image_column: batch row {i}") for i, v in enumerate(values)]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from ..batching import TARGET_PREFIX, add_batch_labels

        target_key = TARGET_PREFIX + IMAGE_KEY
        target = [r[target_key] for r in rows if target_key in r]
        batch = {"pixel_values": self.pixel_values([r[IMAGE_KEY] for r in rows] + target)}
        return add_batch_labels(batch, rows, num_target=len(target))


def write_image_folder(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    """Write arrays as an ``imagefolder`` tree of PNGs (``root/<class name>/<i>.png``), the layout
    ``datasets.load_dataset(folder)`` reads with a ``label`` column. Used by tests and examples."""
    root = Path(root)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        array_to_pil(img, where=f"row {i}").save(folder / f"{i:05d}.png")
    return root
