"""Image classification transfer: image data (datasets, imagefolder, Parquet, ``.npz`` arrays) without torchvision,
and EfficientNet-Lite0 with its packaged ImageNet weights as a transformers model (registered with the Auto classes
on import). See docs/vision.md."""

from .efficientnet import (
    EfficientNetLiteConfig,
    EfficientNetLiteForImageClassification,
    EfficientNetLiteModel,
    register_auto_classes,
)

register_auto_classes()

__all__ = [
    "EfficientNetLiteConfig",
    "EfficientNetLiteForImageClassification",
    "EfficientNetLiteModel",
]
