"""Name -> task registry, in the manner of :mod:`hf_transfer.methods.registry`; and which task a recipe or a saved
model folder is.

A recipe names its task with the ``task`` field (``task: multi-label-classification``). Left out (``None``), the task
is inferred as it always was: ``image-classification`` when ``image_column`` is set, else ``text-classification``. A
model folder written by a run says its task in the ``recipe.yaml`` beside it (its ``task`` and ``image_column``);
folders without one (older exports, other tools) are read from their files: an image processor means images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import RecipeError, nearest
from .base import Task

_TASKS: dict[str, Task] = {}

#: the task of a recipe that names none and has no ``image_column``; and of one with an ``image_column``
DEFAULT_TEXT_TASK = "text-classification"
DEFAULT_IMAGE_TASK = "image-classification"


def register_task(task_class: type[Task]) -> None:
    """Make a task available to recipes as ``task: <task_class.name>``. One instance serves every run (tasks hold
    no per-run state)."""
    name = task_class.name
    if not name:
        raise ValueError(f"{task_class.__name__}: set the class attribute `name` (e.g. 'text-classification')")
    if name in _TASKS:
        raise ValueError(f"a task named {name!r} is already registered")
    _TASKS[name] = task_class()


def get_task(name: str, *, field: str = "task") -> Task:
    """The registered task called ``name``; an unknown name is a :class:`RecipeError` naming the nearest one."""
    try:
        return _TASKS[name]
    except KeyError:
        hint = nearest(str(name), list(_TASKS))
        fix = f"did you mean {hint!r}? " if hint else ""
        raise RecipeError(f"{field}: unknown task {name!r}; {fix}registered tasks: {', '.join(available_tasks())}") \
            from None


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def task_name_for(task: str | None, image_column: str | None) -> str:
    """The task a recipe's data fields mean: ``task`` when given, else inferred from ``image_column``."""
    if task is not None:
        return task
    return DEFAULT_IMAGE_TASK if image_column else DEFAULT_TEXT_TASK


def task_for_data(data_args: Any) -> Task:
    """The task of a recipe's data arguments (:class:`hf_transfer.recipe.DataArguments` or any object with
    ``task`` / ``image_column`` attributes)."""
    return get_task(task_name_for(getattr(data_args, "task", None), getattr(data_args, "image_column", None)))


def task_for_folder(model_dir: str | os.PathLike, saved: dict[str, Any] | None = None) -> Task:
    """The task of a model folder written by a run. ``saved``: its ``recipe.yaml`` already read (the keys
    :func:`hf_transfer.evaluation.saved_recipe` returns); read here when not given."""
    path = Path(model_dir)
    if saved is None:
        saved = _saved_task_keys(path)
    if saved.get("task"):
        return get_task(saved["task"], field=f"task (in {str(path / 'recipe.yaml')!r})")
    if saved.get("image_column") or (path / "preprocessor_config.json").is_file():
        return get_task(DEFAULT_IMAGE_TASK)
    return get_task(DEFAULT_TEXT_TASK)


def load_trained(model_dir: str | os.PathLike):
    """Load a folder written by :func:`hf_transfer.train`: a plain model, or a PEFT adapter on its base model.
    Returns ``(model, processor)``: the tokenizer for a text model, the image processor for an image classifier.
    The folder's task (:func:`task_for_folder`) decides the Auto class and the processor."""
    return task_for_folder(model_dir).load_trained(model_dir)


def _saved_task_keys(path: Path) -> dict[str, Any]:
    import yaml

    recipe = path / "recipe.yaml"
    if not recipe.is_file():
        return {}
    try:
        values = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}  # a damaged recipe.yaml: the folder's files decide (the evaluate command reports the file itself)
    if not isinstance(values, dict):
        return {}
    return {k: values.get(k) for k in ("task", "image_column")}
