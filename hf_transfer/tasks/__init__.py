"""Tasks, one module each, registered by name (see :mod:`hf_transfer.tasks.base` and docs/tasks.md).

A recipe's ``task`` field picks one (default: inferred, ``image-classification`` with ``image_column``, else
``text-classification``). Adding a task is one module here with a :class:`Task` subclass and one
:func:`register_task` line, plus recipes and tests; no core file changes.
"""

from . import (  # noqa: F401  (register)
    audio_classification,
    image_classification,
    multi_label_classification,
    text_classification,
    token_classification,
)
from .base import MethodRows, Task
from .loading import CLASSIFIER_CONFIG, save_classifier_config
from .registry import (
    available_tasks,
    get_task,
    load_trained,
    register_task,
    task_for_data,
    task_for_folder,
    task_name_for,
)

__all__ = [
    "CLASSIFIER_CONFIG",
    "MethodRows",
    "Task",
    "available_tasks",
    "get_task",
    "load_trained",
    "register_task",
    "save_classifier_config",
    "task_for_data",
    "task_for_folder",
    "task_name_for",
]
