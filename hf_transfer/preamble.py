"""The first steps every family's run shares, once the recipe is parsed and checked (``hf_transfer.train``).

``train()`` itself runs the checks that must come before any work (:mod:`hf_transfer.preflight`, the output folder
in :mod:`hf_transfer.outputs`) and hands the recipe to its family (:mod:`hf_transfer.families`); the family's train
function starts with :func:`begin_run` and ends with :func:`hf_transfer.hub.finish_export`, the shared epilogue
(recipe, metrics and card written, the folder published atomically, pushed when asked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checkpoints import resolve_resume_checkpoint
from .errors import RecipeError
from .hub import PushRequest, take_push_request


@dataclass
class RunStart:
    """What :func:`begin_run` took out of the recipe before the run changes its arguments."""

    #: the recipe as the user asked for it (``recipe.yaml`` in the export and the card are written from it)
    recipe_yaml: str
    #: the push the recipe asks for, taken out of the TrainingArguments (token included) so that no Trainer pushes
    #: a half-finished folder; the epilogue pushes the published one
    push: PushRequest | None


def begin_run(recipe: Any, *, resumable: bool = True, family: str = "") -> RunStart:
    """The preamble: snapshot the recipe, take the push request, resolve ``resume_from_checkpoint`` (``latest`` ->
    the newest complete checkpoint; a half-written one is refused before anything loads; ``resumable=False``
    refuses any, naming ``family``), keep every column the collator needs, no pinned memory without a GPU, and set
    the seed."""
    import torch
    from transformers import set_seed

    args = recipe.training
    recipe_yaml = recipe.to_yaml()
    push = take_push_request(args)
    if resumable:
        args.resume_from_checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    elif args.resume_from_checkpoint:
        raise RecipeError(f"resume_from_checkpoint: {family} runs do not resume from a checkpoint yet; remove it "
                          "and start again")
    # Our datasets hold exactly the columns the collators need (target_*, task_ids ...): the Trainer keeps them all.
    args.remove_unused_columns = False
    if not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # pinning needs an accelerator; on the CPU it only warns
    set_seed(args.seed)
    return RunStart(recipe_yaml, push)
