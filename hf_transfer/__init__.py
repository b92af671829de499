"""hf_transfer: transfer learning as a one-command job in the Hugging Face ecosystem.

    >>> import hf_transfer
    >>> result = hf_transfer.train("recipes/text_classification/lora.yaml", max_steps=50)
    >>> result.metrics["target_accuracy"]

See the README for recipes, the CLI and ``accelerate launch``.
"""

__version__ = "0.1.0"

from .errors import DataError, RecipeError, UserError  # noqa: E402
from .methods import MethodConfig, StepBatch, TransferMethod, available_methods, register_method  # noqa: E402
from .multitask import MultiTaskConfig, MultiTaskModel  # noqa: E402  (registers the Auto classes)
from .recipe import Recipe, load_recipe  # noqa: E402
from .run import TrainResult, evaluate, train  # noqa: E402
from .trainer import TransferTrainer  # noqa: E402
from .vision import EfficientNetLiteConfig, EfficientNetLiteForImageClassification  # noqa: E402  (registers them)

__all__ = [
    "DataError",
    "EfficientNetLiteConfig",
    "EfficientNetLiteForImageClassification",
    "MethodConfig",
    "MultiTaskConfig",
    "MultiTaskModel",
    "Recipe",
    "RecipeError",
    "StepBatch",
    "TrainResult",
    "TransferMethod",
    "TransferTrainer",
    "UserError",
    "__version__",
    "available_methods",
    "evaluate",
    "load_recipe",
    "register_method",
    "train",
]
