"""What ``hf-transfer evaluate`` settles before it loads a model: its settings and the model folder's soundness.

Settings not given on the command line come from the ``recipe.yaml`` saved beside the model, so a model trained at
``max_length: 128`` on a ``review`` column is evaluated the same way; then from the defaults. The folder's JSON files
must parse, its safetensors weights must be complete, and ``max_length`` must fit the model's positions: each
problem is one line naming the file or the option, before any weights load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .defaults import DEFAULT_MAX_LENGTH
from .errors import RecipeError, UserError
from .metrics import check_metric_names

# Keys read from the training recipe saved beside the model (recipe.yaml) when the caller does not set them.
RECIPE_KEYS = ("task", "text_column", "text_pair_column", "label_column", "image_column", "max_length", "metrics")
JSON_FILES = ("config.json", "adapter_config.json", "preprocessor_config.json", "tokenizer_config.json")
# Models whose position table holds padding_idx + 1 rows before the first real position.
OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "mpnet")


@dataclass
class EvaluationSettings:
    """The resolved settings of one evaluation (``None`` where a setting does not apply)."""

    text_column: str
    text_pair_column: str | None
    label_column: str
    image_column: str | None
    max_length: int | None
    metrics: list[str]
    #: the registered task (hf_transfer.tasks) the model folder is evaluated as
    task: str = "text-classification"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"model: {str(path)!r} is not valid JSON ({err}); the folder is damaged: export or train "
                        "it again") from None
    if not isinstance(value, dict):
        raise UserError(f"model: {str(path)!r} should hold a JSON object, got {type(value).__name__}; the folder is "
                        "damaged: export or train it again")
    return value


def _check_weights(folder: Path) -> None:
    from .checkpoints import unreadable_reason  # the same check a checkpoint gets before a resume

    for path in sorted(folder.glob("*.safetensors")):
        why = unreadable_reason(path)
        if why is not None:
            raise UserError(f"model: {str(path)!r} is truncated or not a safetensors file ({why}); export or train "
                            "the model again")


def read_model_folder(model_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Parse the folder's JSON files and open its safetensors headers; ``{file name: parsed JSON}``.

    Raises:
        UserError: the folder is missing or holds no model, a JSON file does not parse, a weights file is truncated.
    """
    folder = Path(model_dir)
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise UserError(f"model: {str(folder)!r} has neither config.json nor adapter_config.json; is it a trained "
                        "model?")
    files = {name: _read_json(folder / name) for name in JSON_FILES if (folder / name).is_file()}
    _check_weights(folder)
    return files


def _positions(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            offset = 2 if config.get("model_type") in OFFSET_POSITION_MODELS else 0
            return value - offset
    return None


def max_model_length(files: dict[str, dict[str, Any]]) -> int | None:
    """The most tokens the model takes: its position table (for an adapter, its base model's when that is a local
    folder or a packaged copy) and the tokenizer's ``model_max_length``, whichever is smaller; ``None`` if unknown."""
    from .backbones import resolve_model_path

    config = files.get("config.json")
    if config is None and "adapter_config.json" in files:
        base = files["adapter_config.json"].get("base_model_name_or_path")
        base_config = Path(resolve_model_path(base)) / "config.json" if isinstance(base, str) and base else None
        if base_config is not None and base_config.is_file():
            config = _read_json(base_config)
    limits = [_positions(config)] if config else []
    tokenizer_limit = files.get("tokenizer_config.json", {}).get("model_max_length")
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:  # "unlimited" is stored as 1e30
        limits.append(tokenizer_limit)
    limits = [n for n in limits if n]
    return min(limits) if limits else None


def saved_recipe(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The keys of :data:`RECIPE_KEYS` that the ``recipe.yaml`` beside the model sets (``{}`` if there is none)."""
    path = Path(model_dir) / "recipe.yaml"
    if not path.is_file():
        return {}
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"model: {str(path)!r} is not valid YAML ({str(err).splitlines()[0]}); pass the settings "
                        "on the command line or repair the file") from None
    if not isinstance(recipe, dict):
        return {}
    return {k: recipe[k] for k in RECIPE_KEYS if recipe.get(k) is not None}


def resolve_settings(
    model_dir: str | os.PathLike,
    files: dict[str, dict[str, Any]],
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    max_length: int | None = None,
    metrics: list[str] | None = None,
) -> EvaluationSettings:
    """Given settings win, then the saved recipe's, then the defaults; ``max_length`` is checked against the model.

    A ``max_length`` from the saved recipe or the default is capped at the model's length; one given explicitly that
    exceeds it is an error (the model would fail on the first long input).
    """
    from .tasks import task_for_folder

    saved = saved_recipe(model_dir)
    image = image_column or (saved.get("image_column") if text_column is None else None)
    # The saved recipe's task; an image column (given, or saved and not overridden by a text column) means images.
    task = task_for_folder(model_dir, {"task": None if image_column else saved.get("task"), "image_column": image})
    settings = EvaluationSettings(
        text_column=text_column or saved.get("text_column", "text"),
        text_pair_column=text_pair_column or (saved.get("text_pair_column") if text_column is None else None),
        label_column=label_column or saved.get("label_column", "label"),
        image_column=image,
        max_length=None,
        metrics=check_metric_names(list(metrics or saved.get("metrics") or task.default_metrics())),
        task=task.name,
    )
    if not task.uses_tokens:  # e.g. image models have no token positions
        return settings
    limit = max_model_length(files)
    if max_length is not None:
        if max_length < 1:
            raise RecipeError(f"max_length: must be >= 1, got {max_length}")
        if limit is not None and max_length > limit:
            raise RecipeError(f"max_length: {max_length} is more than this model takes ({limit} tokens, from its "
                              f"config.json / tokenizer_config.json); pass --max_length {limit} or less")
        settings.max_length = max_length
    else:
        chosen = saved.get("max_length", DEFAULT_MAX_LENGTH)
        settings.max_length = min(chosen, limit) if limit is not None else chosen
    return settings
