"""Which checkpoint to resume from, and whether it is whole.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG states, our method state) and
``trainer_state.json`` last. A run killed while it writes one leaves a ``checkpoint-N`` folder without that file;
resuming from it would fail half-way or, worse, mix states. So a checkpoint counts as complete only when
``trainer_state.json`` is there, and ``resume_from_checkpoint: latest`` picks the newest complete one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import RecipeError

COMPLETE_MARKER = "trainer_state.json"  # written last by Trainer._save_checkpoint
LATEST = ("latest", "last", "true")
_STEP = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / COMPLETE_MARKER).is_file()]


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """Turn the recipe's ``resume_from_checkpoint`` into a checkpoint folder, or ``None`` to start afresh.

    ``latest`` (also ``last``/``true``) means the newest complete checkpoint in ``output_dir``; a path must be a
    complete checkpoint. Raises :class:`RecipeError` naming the field and the checkpoint to use instead.
    """
    if value is None or value is False or str(value).strip().lower() in ("", "false", "none"):
        return None
    done = complete_checkpoints(output_dir)
    if value is True or str(value).strip().lower() in LATEST:
        if not done:
            raise RecipeError(
                f"resume_from_checkpoint: no complete checkpoint in output_dir {str(output_dir)!r} (a checkpoint is "
                f"complete once {COMPLETE_MARKER} is written); train from the start or set save_steps"
            )
        return str(done[-1])
    path = Path(value)
    if not path.is_dir():
        raise RecipeError(f"resume_from_checkpoint: {str(value)!r} is not a folder")
    if not (path / COMPLETE_MARKER).is_file():
        siblings = complete_checkpoints(path.parent)
        hint = f"; resume from {str(siblings[-1])!r} (the newest complete one) instead" if siblings else ""
        raise RecipeError(
            f"resume_from_checkpoint: {str(value)!r} is incomplete: it has no {COMPLETE_MARKER}, so the run was "
            f"stopped while writing it{hint}"
        )
    return str(path)
