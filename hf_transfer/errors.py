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


def unknown_choice(field: str, value: str, choices: Iterable[str]) -> RecipeError:
    choices = list(choices)
    hint = nearest(value, choices)
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    return RecipeError(f"{field}: unknown value {value!r}; {did_you_mean}choose one of {', '.join(sorted(choices))}")
