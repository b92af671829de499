"""Which checkpoint to resume from, and whether it is whole.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG states, our method state) and
``trainer_state.json`` last. A run killed while it writes one leaves a folder with some files missing or cut short;
a disk that filled up, or a copy that stopped, does the same. Resuming from it would continue silently with a fresh
optimizer, or fail half-way with a traceback. So before a checkpoint is chosen every file the Trainer needs is
checked: present, and readable (a safetensors header parsed, a torch file's zip directory read, a JSON state parsed;
cheap, nothing is loaded). ``resume_from_checkpoint: latest`` picks the newest complete checkpoint and says which
incomplete ones it passed over; a named checkpoint that is incomplete is refused, naming the missing or damaged file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

from .errors import RecipeError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "trainer_state.json"  # written last by Trainer._save_checkpoint
LATEST = ("latest", "last", "true")
_STEP = re.compile(r"^checkpoint-(\d+)$")

# The model weights, in the forms the Trainer writes them (plain, sharded, PEFT adapter, legacy .bin).
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "pytorch_model.bin.index.json", "adapter_model.bin")
_OPTIMIZER = ("optimizer.pt", "optimizer.bin")
METHOD_STATE = "transfer_methods.safetensors"  # trainer.METHOD_STATE_FILE: a method's own state (discriminators)


def checkpoint_problem(folder: str | os.PathLike, *, also: tuple[str, ...] = ()) -> str | None:
    """Why ``folder`` cannot be resumed from (``"optimizer.pt is missing"``, ``"model.safetensors is damaged
    (...)"``), or ``None`` when every file the Trainer reads back is there and readable.

    Engines that save their own state (DeepSpeed's ``global_step*`` folder, FSDP's sharded ``*_fsdp*`` folders) are
    checked for the parts the Trainer itself writes: the state and the RNG. ``also``: more files that must be there
    (a method's state, when the run's other checkpoints have it)."""
    path = Path(folder)
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    engine_state = any(n.startswith("global_step") or "fsdp" in n or re.match(r"optimizer_\d+$", n) for n in names)
    if COMPLETE_MARKER not in names:
        return f"{COMPLETE_MARKER} is missing (the run stopped while writing this checkpoint)"
    required: list[tuple[str, tuple[str, ...]]] = [(COMPLETE_MARKER, (COMPLETE_MARKER,))]
    if not engine_state:
        sharded_optimizer = any(re.match(r"rank\d+-of-\d+-optimizer\.pt$", n) for n in names)
        required += [("model weights", _WEIGHTS), ("scheduler.pt", ("scheduler.pt",))]
        if not sharded_optimizer:
            required.append(("optimizer.pt", _OPTIMIZER))
    required += [(name, (name,)) for name in also]
    rng = sorted(n for n in names if re.match(r"rng_state(_\d+)?\.pth$", n))
    if not rng:
        return "rng_state.pth is missing"
    for what, choices in required:
        if not any(c in names for c in choices):
            return f"{what} is missing" if what != "model weights" else f"the model weights ({choices[0]}) are missing"
    for name in sorted(names):
        problem = unreadable_reason(path / name)
        if problem:
            return f"{name} is damaged ({problem})"
    return None


def unreadable_reason(file: Path) -> str | None:
    """A reason ``file`` cannot be read back, checked without loading it (a safetensors header parsed, a torch
    file's zip directory read, JSON parsed); ``None`` when it looks whole. Also used on exported model folders."""
    if not file.is_file():
        return None
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt"):
                pass
        elif file.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(file):  # torch.save writes a zip archive, its directory at the end of the file
                pass
        elif file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
    except Exception as err:  # any failure to parse is a damaged file
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def _checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _expected_extras(folders: list[Path]) -> tuple[str, ...]:
    """Files a run writes into every checkpoint when it writes them at all (a method's state)."""
    return (METHOD_STATE,) if any((f / METHOD_STATE).is_file() for f in folders) else ()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoint-N`` folders of ``output_dir`` (see :func:`checkpoint_problem`), oldest step first."""
    folders = _checkpoint_folders(output_dir)
    also = _expected_extras(folders)
    return [p for p in folders if checkpoint_problem(p, also=also) is None]


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """Turn the recipe's ``resume_from_checkpoint`` into a checkpoint folder, or ``None`` to start afresh.

    ``latest`` (also ``last``/``true``) means the newest complete checkpoint in ``output_dir``, passing over (with a
    logged message) newer ones that are incomplete; a path must be a complete checkpoint. Raises
    :class:`RecipeError` naming the field, the missing or damaged file, and the checkpoint to use instead.
    """
    if value is None or value is False or str(value).strip().lower() in ("", "false", "none"):
        return None
    if value is True or str(value).strip().lower() in LATEST:
        chosen = None
        folders = _checkpoint_folders(output_dir)
        also = _expected_extras(folders)
        for folder in reversed(folders):
            problem = checkpoint_problem(folder, also=also)
            if problem is None:
                chosen = folder
                break
            logger.warning("resume_from_checkpoint: skipping %s: %s", folder.name, problem)
        if chosen is None:
            raise RecipeError(
                f"resume_from_checkpoint: no complete checkpoint in output_dir {str(output_dir)!r} (every file the "
                "Trainer reads back present and readable); train from the start or set save_steps"
            )
        logger.info("resume_from_checkpoint: resuming from %s", chosen)
        return str(chosen)
    path = Path(value)
    if not path.is_dir():
        raise RecipeError(f"resume_from_checkpoint: {str(value)!r} is not a folder")
    problem = checkpoint_problem(path, also=_expected_extras(_checkpoint_folders(path.parent)))
    if problem is not None:
        siblings = complete_checkpoints(path.parent)
        hint = f"; resume from {str(siblings[-1])!r} (the newest complete one) instead" if siblings else ""
        raise RecipeError(f"resume_from_checkpoint: {str(value)!r} is incomplete: {problem}{hint}")
    return str(path)
