"""User-facing errors: one line that names the bad field or file and how to fix it.

The CLI prints a :class:`UserError` as ``error: <message>`` and exits with status 2, without a traceback. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user (recipe, data, paths, options). Raised before any training starts."""


class RecipeError(UserError):
    """A recipe field is unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A dataset is missing, empty or does not match the recipe (columns, labels)."""


class TrainingDivergedError(UserError):
    """The training loss became NaN or infinite. Raised before the bad step's update (or, on an accelerator, before
    the next checkpoint or log), so no checkpoint holds the corrupted weights."""


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when nothing is close."""
    hint = nearest(name, candidates)
    return f"; did you mean {hint!r}?" if hint else ""


#: Recipe names users bring from TRL (``SFTConfig``, ``ModelConfig``, ``ScriptArguments``) and the transformers example
#: scripts (``run_classification.py``) -> ours. Consulted before the nearest-spelling guess, which would otherwise
#: send ``lora_r`` to ``local_rank`` and ``dataset_name`` to ``data_seed``.
FIELD_ALIASES: dict[str, str] = {
    "lora_r": "peft.r",
    "lora_alpha": "peft.lora_alpha",
    "lora_dropout": "peft.lora_dropout",
    "lora_target_modules": "peft.target_modules",
    "lora_modules_to_save": "peft.modules_to_save",
    "lora_task_type": "peft.task_type",
    "use_rslora": "peft.use_rslora",
    "use_dora": "peft.use_dora",
    "peft_type": "peft.peft_type",
    "target_modules": "peft.target_modules",
    "model_name": "model_name_or_path",
    "model_id": "model_name_or_path",
    "model_revision": "revision",
    "dataset_name": "source_data",
    "dataset": "source_data",
    "train_file": "source_data",
    "dataset_config_name": "source_config",
    "dataset_config": "source_config",
    "dataset_train_split": "source_split",
    "train_split": "source_split",
    "validation_file": "eval_data",
    "test_file": "eval_data",
    "dataset_test_split": "eval_split",
    "validation_split_name": "eval_split",
    "max_seq_length": "max_length",
    "max_seq_len": "max_length",
    "max_train_samples": "max_source_samples",
    "max_predict_samples": "max_eval_samples",
    "dataset_text_field": "text_column",
    "text_column_name": "text_column",
    "text_column_names": "text_column",
    "label_column_name": "label_column",
}
#: Foreign names that are not one field of ours, and what to write instead.
FIELD_ADVICE: dict[str, str] = {
    "use_peft": "PEFT is on when the recipe has a `peft:` block: write `peft: {peft_type: LORA, r: 16}` in the "
    "recipe, or pass --peft.r 16 (any --peft.FIELD creates the block)",
    "config": "a recipe names no other recipe; pass the file as `hf-transfer train RECIPE.yaml` or --config "
    "RECIPE.yaml",
}


def unknown_field_fix(key: str, candidates: Iterable[str], *, fallback: str) -> str:
    """How to fix an unknown recipe key: our name for a known TRL / example-script name, else the nearest valid
    field, else ``fallback``."""
    if key in FIELD_ADVICE:
        return FIELD_ADVICE[key]
    ours = FIELD_ALIASES.get(key)
    if ours is not None:
        how = f"--{ours} VALUE on the command line"
        if ours.startswith("peft."):
            how += f", or `{ours.split('.', 1)[1]}:` in the recipe's `peft:` block"
        return f"here it is called {ours} ({how})"
    hint = nearest(key, candidates)
    return f"did you mean {hint!r}?" if hint else fallback


def unknown_choice(field: str, value: str, choices: Iterable[str]) -> RecipeError:
    choices = list(choices)
    hint = nearest(value, choices)
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    return RecipeError(f"{field}: unknown value {value!r}; {did_you_mean}choose one of {', '.join(sorted(choices))}")
