"""Lifelong recipes: a ``tasks:`` list learned in order, and how forgetting is held back.

```yaml
model_name_or_path: sentence-transformers/all-MiniLM-L6-v2
lifelong_method: ewc          # naive | adapter | ewc | l2sp | replay
ewc_lambda: 1000
steps_per_task: 100
tasks:                        # learned in this order
  - {name: books, data: ../shared/data/fdu_mtl/books.train.jsonl, eval_data: ../shared/data/fdu_mtl/books.test.jsonl}
  - {name: dvd,   data: ../shared/data/fdu_mtl/dvd.train.jsonl,   eval_data: ../shared/data/fdu_mtl/dvd.test.jsonl}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine_rules import check_launched_engine
from ..errors import RecipeError, unknown_choice
from ..tasklists.recipe import FREEZING_FIELDS, TaskListRecipe, load_task_list_recipe

LIFELONG_METHODS = ("naive", "adapter", "ewc", "l2sp", "replay")


@dataclass
class LifelongArguments:
    """The lifelong method and its strength; how long each task trains; what is evaluated."""

    lifelong_method: str = field(
        default="naive",
        metadata={"help": "naive (plain sequential fine-tuning), adapter (a LoRA adapter and head per task on a "
                          "frozen base; needs the task at inference), ewc (online EWC), l2sp (L2-SP toward the "
                          "pretrained weights) or replay (a small buffer of earlier rows)."},
    )
    steps_per_task: int = field(default=100, metadata={"help": "Optimizer steps on each task."})
    ewc_lambda: float = field(default=1000.0, metadata={"help": "ewc: weight of the Fisher-weighted penalty."})
    ewc_gamma: float = field(default=1.0, metadata={"help": "ewc: decay of the accumulated Fisher (online EWC)."})
    fisher_samples: int = field(default=200, metadata={"help": "ewc: rows per task for the Fisher diagonal."})
    l2sp_alpha: float = field(default=0.1, metadata={"help": "l2sp: pull of the encoder to its pretrained weights."})
    l2sp_beta: float = field(default=0.01, metadata={"help": "l2sp: weight decay of the head."})
    replay_size: int = field(default=200, metadata={"help": "replay: rows kept over all earlier tasks."})
    eval_future_tasks: bool = field(
        default=False,
        metadata={"help": "Also evaluate tasks not trained yet (the full matrix; forward transfer), at T^2 cost."},
    )

    def __post_init__(self):
        if self.lifelong_method not in LIFELONG_METHODS:
            raise unknown_choice("lifelong_method", self.lifelong_method, LIFELONG_METHODS)
        if self.steps_per_task < 1:
            raise RecipeError(f"steps_per_task: must be >= 1, got {self.steps_per_task}")
        for name in ("ewc_lambda", "l2sp_alpha", "l2sp_beta"):
            if getattr(self, name) < 0:
                raise RecipeError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ewc_gamma <= 1:
            raise RecipeError(f"ewc_gamma: must be in [0, 1], got {self.ewc_gamma}")
        for name in ("fisher_samples", "replay_size"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name}: must be >= 1, got {getattr(self, name)}")


class LifelongRecipe(TaskListRecipe):
    """A lifelong recipe (``lifelong_method`` present)."""

    family = "lifelong"

    @property
    def lifelong(self) -> LifelongArguments:
        return self.args


def load_lifelong_recipe(raw: dict[str, Any], overrides: dict[str, Any]) -> LifelongRecipe:
    """Parse a recipe with ``lifelong_method`` (see the module docstring)."""
    base, args, lists = load_task_list_recipe(raw, overrides, args_class=LifelongArguments, lists=("tasks",),
                                              kind="lifelong", doc="docs/meta_lifelong.md", accepts=FREEZING_FIELDS)
    _check_freezing(base.model, args.lifelong_method)
    if args.lifelong_method == "adapter" and base.peft is not None and base.peft.get("peft_type") != "LORA":
        raise RecipeError(f"peft.peft_type: lifelong adapters are LoRA adapters, got {base.peft['peft_type']!r}")
    if args.lifelong_method != "adapter" and base.peft is not None:
        raise RecipeError("peft: used only with lifelong_method: adapter (one adapter per task); remove the peft "
                          "block or change lifelong_method")
    if len(lists["tasks"]) < 2:
        raise RecipeError("tasks: a lifelong recipe needs at least two tasks in sequence")
    check_launched_engine(recipe_kind="lifelong")  # DDP only: FSDP / DeepSpeed launches are refused with the reason
    return LifelongRecipe(base, args, lists)


def _check_freezing(plan: Any, method: str) -> None:
    """Refuse a freezing plan with ``lifelong_method: adapter``, whose base is frozen already (one-line error)."""
    chosen = [name for name in ("freeze_backbone", "trainable_layers", "gradual_unfreezing_steps")
              if getattr(plan, name) not in (None, False)]
    if plan.layerwise_lr_decay < 1.0:
        chosen.append("layerwise_lr_decay")
    if chosen and method == "adapter":
        raise RecipeError(f"{chosen[0]}: not used with lifelong_method: adapter, whose base model is frozen already "
                          "(only each task's LoRA adapter and head train); drop it, or choose another lifelong_method")
