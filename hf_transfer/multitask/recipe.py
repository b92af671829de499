"""Multi-task recipes: the flat recipe format plus a ``tasks:`` list and the sharing / sampling fields.

```yaml
model_name_or_path: sentence-transformers/all-MiniLM-L6-v2
sharing: soft_lora            # hard | soft_lora | soft_l2 | shared_private
task_sampling: temperature    # proportional | temperature | round_robin
sampling_temperature: 2.0
peft: {peft_type: LORA, r: 8, lora_alpha: 16}
tasks:
  - {name: books, data: ../shared/data/fdu_mtl/books.train.jsonl, eval_data: ../shared/data/fdu_mtl/books.test.jsonl}
  - {name: dvd,   data: ../shared/data/fdu_mtl/dvd.train.jsonl,   eval_data: ../shared/data/fdu_mtl/dvd.test.jsonl}
max_length: 128
learning_rate: 5.0e-4
```

Everything else (model fields, ``max_length``, ``peft:``, every ``TrainingArguments`` field) is read by
:func:`hf_transfer.recipe.load_recipe` as for a single-task recipe. ``text_column``, ``text_pair_column`` and
``label_column`` at the top level are defaults for every task. Single-task data fields (``source_data`` ...) are
errors here; per-task unlabelled target data is ``tasks[i].target_data``, for ``method: [dann]`` and the other
target-data methods (:mod:`hf_transfer.multitask.methods`); the freezing plans (``freeze_backbone`` ...) apply as
in a flat recipe (:mod:`hf_transfer.multitask.freezing`). A task field is overridden on the command line as
``--tasks.<name or index>.<field> value``. Every problem is a one-line :class:`~hf_transfer.errors.RecipeError`
naming ``tasks[i].field``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import RecipeError, unknown_choice
from ..methods import available_methods
from ..recipe import Recipe, _merge_dotted
from ..tasklists.recipe import (  # noqa: F401  (TaskSpec, NOT_WITH_TASKS ... also importable from here)
    FREEZING_FIELDS,
    NOT_WITH_TASKS,
    TASK_DEFAULTS,
    TaskListRecipe,
    TaskSpec,
    flat_task_recipe,
    parse_family_fields,
    parse_tasks,
)
from .freezing import check_freezing
from .methods import check_task_methods
from .modeling import SHARING_MODES
from .sampling import SAMPLING_STRATEGIES


@dataclass
class MultiTaskArguments:
    """How the tasks share parameters, how batches pick a task, and how the task losses add up."""

    sharing: str = field(
        default="hard",
        metadata={"help": "hard (one encoder), soft_lora (one LoRA adapter per task on a frozen base), soft_l2 "
                          "(one encoder per task, tied by an L2 penalty), shared_private (a shared plus a private "
                          "adapter per task, orthogonal)."},
    )
    task_sampling: str = field(
        default="proportional",
        metadata={"help": "Which task each batch trains: proportional (to rows), temperature (p ∝ n^(1/T)) or "
                          "round_robin."},
    )
    sampling_temperature: float = field(default=2.0, metadata={"help": "T of task_sampling: temperature."})
    loss_weighting: str = field(
        default="static",
        metadata={"help": "static (each task's loss_weight) or uncertainty (learned, Kendall et al. 2018)."},
    )
    l2_tie_weight: float = field(default=1e-3, metadata={"help": "soft_l2: weight of sum_t ||theta_t - mean||^2."})
    orthogonality_weight: float = field(
        default=0.01, metadata={"help": "shared_private: weight of ||S^T P||_F^2 between shared and private features."}
    )
    adversarial_weight: float = field(
        default=0.0, metadata={"help": "shared_private: weight of the adversarial task discriminator (0 = off)."}
    )
    from_multitask_model: str | None = field(
        default=None,
        metadata={"help": "Add tasks to this trained multi-task model: tasks it already has are frozen and only "
                          "evaluated; new tasks get a new head (and adapter) and train alone."},
    )

    def __post_init__(self):
        if self.sharing not in SHARING_MODES:
            raise unknown_choice("sharing", self.sharing, SHARING_MODES)
        if self.task_sampling not in SAMPLING_STRATEGIES:
            raise unknown_choice("task_sampling", self.task_sampling, SAMPLING_STRATEGIES)
        if self.sampling_temperature <= 0:
            raise RecipeError(f"sampling_temperature: must be > 0, got {self.sampling_temperature}")
        if self.loss_weighting not in ("static", "uncertainty"):
            raise unknown_choice("loss_weighting", self.loss_weighting, ("static", "uncertainty"))
        for name in ("l2_tie_weight", "orthogonality_weight", "adversarial_weight"):
            if getattr(self, name) < 0:
                raise RecipeError(f"{name}: must be >= 0, got {getattr(self, name)}")


MULTITASK_FIELDS = tuple(f.name for f in dataclasses.fields(MultiTaskArguments))
#: Fields of NOT_WITH_TASKS a multi-task recipe accepts: the transfer methods (hf_transfer.multitask.methods) and the
#: freezing plans (hf_transfer.multitask.freezing).
MULTITASK_ACCEPTS = ("method", *FREEZING_FIELDS)


class MultiTaskRecipe(TaskListRecipe):
    """A resolved multi-task recipe: the shared parts (model, training, ``peft:``) as a :class:`Recipe`, the
    multi-task fields, and the tasks (with the top-level column defaults filled in)."""

    family = "multitask"

    def __init__(self, base: Recipe, multitask: MultiTaskArguments, tasks: list[TaskSpec]):
        super().__init__(base, multitask, {"tasks": tasks})

    @property
    def multitask(self) -> MultiTaskArguments:
        return self.args


def load_multitask_recipe(raw: dict[str, Any], overrides: dict[str, Any]) -> MultiTaskRecipe:
    """Parse a recipe whose YAML (or overrides) has ``tasks``. ``raw`` is the recipe as read, ``overrides`` the
    command-line or keyword overrides (``{"learning_rate": 3e-5, "tasks.books.max_train_samples": 100}``)."""
    from ..recipe import load_recipe

    task_overrides = {k: v for k, v in overrides.items() if k.startswith("tasks.")}
    raw = _merge_dotted(dict(raw))
    for key, value in _merge_dotted({k: v for k, v in overrides.items() if k not in task_overrides}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    tasks_raw = raw.pop("tasks", None)
    if isinstance(tasks_raw, str):  # `--tasks` given as YAML text
        tasks_raw = yaml.safe_load(tasks_raw)
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise RecipeError(
            "tasks: expected a list of task entries (- name: ..., data: ..., eval_data: ...), "
            f"got {type(tasks_raw).__name__}"
        )
    for key, hint in NOT_WITH_TASKS.items():
        if key in raw and key not in MULTITASK_ACCEPTS:
            raise RecipeError(f"{key}: not used in a multi-task recipe (it has `tasks`); {hint}")

    # Method blocks (`dann: {...}`) are read by load_recipe below, as in a flat recipe.
    blocks = {k: raw.pop(k) for k in available_methods() if k in raw}
    multitask = parse_family_fields(raw, MultiTaskArguments, kind="multi-task",
                                    also_known={"tasks", *available_methods()}, doc="docs/multitask.md")
    raw.update(blocks)
    defaults = {k: raw[k] for k in TASK_DEFAULTS if raw.get(k) is not None}
    if raw.get("text_pair_column") is None:
        raw.pop("text_pair_column", None)
    base = load_recipe(raw, None)
    tasks = parse_tasks(tasks_raw, task_overrides, defaults={
        "text_column": base.data.text_column, "label_column": base.data.label_column,
        "text_pair_column": base.data.text_pair_column, **defaults,
    })
    _check_sharing(multitask, base)
    check_task_methods(list(base.methods.method), tasks, from_multitask_model=multitask.from_multitask_model)
    check_freezing(base.model, sharing=multitask.sharing, from_multitask_model=multitask.from_multitask_model)
    return MultiTaskRecipe(base, multitask, tasks)


def _check_sharing(multitask: MultiTaskArguments, base: Recipe) -> None:
    lora_modes = ("soft_lora", "shared_private")
    if base.peft is not None and multitask.sharing not in lora_modes:
        raise RecipeError(f"peft: used only with sharing: {' or '.join(lora_modes)} (sharing is "
                          f"{multitask.sharing!r}); remove the peft block or change sharing")
    if base.peft is not None and base.peft.get("peft_type") != "LORA":
        raise RecipeError(f"peft.peft_type: multi-task adapters are LoRA adapters, got {base.peft['peft_type']!r}")
    if multitask.sharing != "shared_private":
        for name in ("adversarial_weight",):
            if getattr(multitask, name) > 0:
                raise RecipeError(f"{name}: only used with sharing: shared_private")
