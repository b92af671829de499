"""Image classification: one class per image, ``AutoModelForImageClassification`` (docs/vision.md).

The task of a recipe with ``image_column``. Images stay undecoded in the prepared tables; the collator runs the
model's image processor on each batch, and optional augmentations (``image_augmentation``) decode and change the
training rows as they are read.
"""

from __future__ import annotations

from typing import Any

from ..errors import RecipeError
from .base import Task
from .registry import register_task


class ImageClassification(Task):
    """Single-label classification of an image (``image_column``)."""

    name = "image-classification"
    pipeline_tag = "image-classification"
    auto_class_name = "AutoModelForImageClassification"
    # PEFT's sequence-classification wrapper passes `input_ids`; the plain PeftModel forwards `pixel_values` as given.
    peft_task_type = None
    supports_streaming = False
    # The before/after t-SNE embeds rows with a text collator; image runs have never drawn it.
    supports_feature_plot = False
    card_kind = "An image"
    uses_tokens = False  # image models have no token positions

    def check_data_args(self, d: Any) -> None:
        if d.image_column is None:
            raise RecipeError(f"image_column: task {self.name} reads images; set image_column (e.g. image)")
        if d.streaming:
            raise RecipeError(
                "streaming: image data (image folders, .npz arrays) is read whole; set streaming: false for images"
            )

    def check_recipe(self, *, data_args: Any, training_args: Any, methods: list[str], **_: Any) -> None:
        if training_args.train_sampling_strategy == "group_by_length":
            raise RecipeError("train_sampling_strategy: group_by_length needs text lengths; images have none. Use "
                              "random")

    def input_columns(self, d: Any) -> list[tuple[str, str]]:
        return [(d.image_column, "image_column")]  # `image_column` replaces `text_column` everywhere

    def check_inputs(self, table: Any, d: Any, *, field: str, spec: str) -> None:
        """Images are checked once all tables are loaded (:meth:`check_loaded`)."""

    def check_loaded(self, tables: dict[str, tuple[Any, str]], d: Any) -> None:
        from ..vision.data import check_images

        for field, (table, spec) in tables.items():  # every image is decoded once, to fail early
            if table is not None and (field != "eval_data" or d.eval_data):
                check_images(table, d.image_column, field=field, spec=spec)

    def load_processor(self, model_args: Any, d: Any):
        from ..backbones import load_image_processor

        return load_image_processor(model_args.model_name_or_path, image_size=d.image_size,
                                    revision=model_args.revision, trust_remote_code=model_args.trust_remote_code)

    def process(self, table: Any, processor: Any, d: Any, *, keep: tuple[str, ...] = ("labels",), desc: str = ""):
        """Only narrowed to the image column: images stay undecoded here; the collator runs the image processor per
        batch (:func:`hf_transfer.vision.data.select_image_column`)."""
        from ..vision.data import select_image_column

        return select_image_column(table, d.image_column, keep=keep)

    def collator(self, processor: Any):
        from ..vision.data import ImageCollator

        return ImageCollator(processor)

    def augment(self, train: Any, d: Any, *, seed: int):
        if not d.image_augmentation:
            return train
        from ..vision.data import augment_table

        return augment_table(train, d.image_augmentation, seed=seed)

    def config_overrides(self, model_args: Any, d: Any) -> dict[str, Any]:
        overrides = {}
        if d.image_size is not None:
            overrides["image_size"] = d.image_size
        return {**overrides, **super().config_overrides(model_args, d)}

    def prepare_model(self, model: Any) -> None:
        from ..backbones import freeze_batchnorm_statistics

        freeze_batchnorm_statistics(model)

    def load_processor_from_folder(self, path: str):
        from ..backbones import load_image_processor

        return load_image_processor(path)

    def evaluation_columns(self, settings: Any) -> list[tuple[str, str]]:
        return [(settings.image_column, "image_column")]

    def evaluation_inputs(self, table: Any, processor: Any, settings: Any):
        from ..vision.data import ImageCollator, select_image_column

        images, collate = select_image_column(table, settings.image_column, keep=()), ImageCollator(processor)

        def batch_inputs(start: int, stop: int) -> dict[str, Any]:
            return collate([images[i] for i in range(start, stop)])

        return batch_inputs


register_task(ImageClassification)
