"""hf_transfer: transfer learning as a one-command job in the Hugging Face ecosystem.

    >>> import hf_transfer
    >>> result = hf_transfer.train("recipes/text_classification/lora.yaml", max_steps=50)
    >>> result.metrics["target_accuracy"]

See the README for recipes, the CLI and ``accelerate launch``.

``import hf_transfer`` is cheap: the public names below are imported on first use (PEP 562), so the command line
answers ``--help`` without loading torch. The model classes the package adds (the multi-task model, EfficientNet-Lite)
register with the transformers Auto classes when their modules load: call ``hf_transfer.register_auto_classes()``
(or ``import hf_transfer.multitask`` / ``import hf_transfer.vision``) before ``AutoModel.from_pretrained`` on such a
folder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .defaults import __version__

#: public name -> the submodule that defines it, imported on first access
_LAZY = {
    "DataError": ".errors",
    "RecipeError": ".errors",
    "UserError": ".errors",
    "MethodConfig": ".methods",
    "StepBatch": ".methods",
    "TransferMethod": ".methods",
    "available_methods": ".methods",
    "register_method": ".methods",
    "MultiTaskConfig": ".multitask",
    "MultiTaskModel": ".multitask",
    "Recipe": ".recipe",
    "load_recipe": ".recipe",
    "FamilySpec": ".families",
    "TrainResult": ".families",
    "available_families": ".families",
    "register_family": ".families",
    "evaluate": ".run",
    "train": ".run",
    "Task": ".tasks",
    "available_tasks": ".tasks",
    "load_trained": ".tasks",
    "register_task": ".tasks",
    "TransferTrainer": ".trainer",
    "EfficientNetLiteConfig": ".vision",
    "EfficientNetLiteForImageClassification": ".vision",
}


def register_auto_classes() -> None:
    """Register the package's model classes with ``AutoConfig`` / ``AutoModel*`` (importing their modules does it)."""
    importlib.import_module(".multitask", __name__)
    importlib.import_module(".vision", __name__)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .errors import DataError, RecipeError, UserError
    from .families import FamilySpec, TrainResult, available_families, register_family
    from .methods import MethodConfig, StepBatch, TransferMethod, available_methods, register_method
    from .multitask import MultiTaskConfig, MultiTaskModel
    from .recipe import Recipe, load_recipe
    from .run import evaluate, train
    from .tasks import Task, available_tasks, load_trained, register_task
    from .trainer import TransferTrainer
    from .vision import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

__all__ = [
    "DataError",
    "EfficientNetLiteConfig",
    "EfficientNetLiteForImageClassification",
    "FamilySpec",
    "MethodConfig",
    "MultiTaskConfig",
    "MultiTaskModel",
    "Recipe",
    "RecipeError",
    "StepBatch",
    "Task",
    "TrainResult",
    "TransferMethod",
    "TransferTrainer",
    "UserError",
    "__version__",
    "available_families",
    "available_methods",
    "available_tasks",
    "evaluate",
    "load_recipe",
    "load_trained",
    "register_auto_classes",
    "register_family",
    "register_method",
    "register_task",
    "train",
]
