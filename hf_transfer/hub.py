"""Write what a run leaves behind (model or adapter, tokenizer, metrics, recipe, model card) and push it. The
card itself is built by :mod:`hf_transfer.cards`.

Everything is written on the main process only, into a staging folder beside ``output_dir``, then swapped in as
a whole folder (:mod:`hf_transfer.outputs`): a crash at any point leaves either the complete old folder or the
complete new one, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .outputs import (  # noqa: F401  (re-exported: the families write their exports with these)
    RUN_MARKER,
    atomic_write_json,
    atomic_write_text,
    discard_stage,
    publish_folder,
    release_lock,
    staging_dir,
)

logger = logging.getLogger(__name__)

# Never uploaded: the run's checkpoints and logs, temporary files, and the folder's ownership marker.
EXPORT_IGNORE = ["checkpoint-*", "runs/*", "*.tmp", ".staging-*", RUN_MARKER]


@dataclass(frozen=True, repr=False)
class PushRequest:
    """Where and how to push the exported folder. The token never appears in its repr."""

    repo_id: str | None
    token: str | None
    private: bool | None

    def __repr__(self) -> str:
        return f"PushRequest(repo_id={self.repo_id!r}, private={self.private!r})"


def take_push_request(training_args) -> PushRequest | None:
    """Take the push settings out of ``TrainingArguments`` before a Trainer sees them.

    We push with our own export (model, card, recipe), so the Trainer must not push checkpoints itself; and the
    Trainer pickles its arguments into every checkpoint (``training_args.bin``), so a ``hub_token`` left there
    would be written to disk. Returns ``None`` when no push was asked for.
    """
    args = training_args
    request = PushRequest(args.hub_model_id, args.hub_token, args.hub_private_repo) if args.push_to_hub else None
    args.push_to_hub = False
    args.hub_token = None
    return request


def finish_export(stage: Path, output_dir: Path, *, recipe_yaml: str, metrics: dict[str, Any], card: str,
                  push: PushRequest | None = None, after_publish: Callable[[], Any] | None = None) -> None:
    """The last steps every export shares: write the recipe, metrics and card into the staged folder, move it into
    place atomically, run ``after_publish`` (optional extras such as a picture, which must not stand between training
    and a published model), then push the published folder if asked. Call on the main process only."""
    from .cards import portable_recipe_yaml

    atomic_write_text(stage / "recipe.yaml", portable_recipe_yaml(recipe_yaml, public=False))
    atomic_write_json(stage / "metrics.json", metrics)
    atomic_write_text(stage / "README.md", card)
    publish_folder(stage, output_dir, keep_lock=True)  # held through the upload: no other run swaps the folder
    try:
        if after_publish is not None:
            after_publish()
        if push is not None:
            url = push_folder(output_dir, push.repo_id or output_dir.name, token=push.token, private=push.private)
            logger.info("hf-transfer: pushed to %s", url)
    finally:
        release_lock(output_dir, fully=True)


def save_trainer_results(trainer, metrics: dict[str, Any], folder: Path) -> None:
    """Write ``trainer_state.json`` (``Trainer.save_state``: the ``log_history`` loss curve included) and
    ``all_results.json`` (``Trainer.save_metrics("all", ...)``) into ``folder``, as the transformers example scripts
    leave them beside the model, so the curve survives ``save_strategy: no``. Local checkpoint paths in the state
    are reduced to the checkpoint's folder name."""
    import dataclasses

    state = dataclasses.asdict(trainer.state)
    if state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = Path(state["best_model_checkpoint"]).name
    atomic_write_text(folder / "trainer_state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "all_results.json", json.dumps(metrics, indent=4, sort_keys=True, default=float))


def push_folder(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload with hf-transfer") -> str:
    """Create ``repo_id`` if needed and upload the exported model folder (checkpoints excluded). Returns the URL.

    The folder is checked first (it exists and holds a model or adapter) and the Hub next (online, token accepted),
    so a bad call creates no empty repository. Every failure is a :class:`~hf_transfer.errors.UserError` starting
    with ``push:``."""
    from huggingface_hub import create_repo, upload_folder

    from .errors import UserError
    from .outputs import check_hub_reachable

    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"push: {str(folder)!r} is not a folder; give the output_dir of a trained model")
    if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise UserError(f"push: {str(folder)!r} holds no model (no config.json or adapter_config.json); give the "
                        "output_dir of a trained model")
    check_hub_reachable(token, field_name="push")
    try:
        create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = upload_folder(
            repo_id=repo_id, folder_path=str(path), token=token, commit_message=commit_message,
            ignore_patterns=EXPORT_IGNORE,
        )
    except Exception as err:  # HTTP errors, a bad repo id, lost network: one line, never a traceback
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"push: uploading to {repo_id!r} failed ({why})") from None
    return str(getattr(info, "commit_url", info))
