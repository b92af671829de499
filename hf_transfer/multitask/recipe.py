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
errors here. A task field is overridden on the command line as ``--tasks.<name or index>.<field> value``. Every
problem is a one-line :class:`~hf_transfer.errors.RecipeError` naming ``tasks[i].field``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import RecipeError, nearest, unknown_choice, unknown_field_fix
from ..recipe import _FLAT_CLASSES, Recipe, _coerce, _field_names, _merge_dotted, _parser, _plain
from .modeling import PROBLEM_TYPES, SHARED_ADAPTER, SHARING_MODES, TASK_NAME_PATTERN
from .sampling import SAMPLING_STRATEGIES


@dataclass
class TaskSpec:
    """One entry of a recipe's ``tasks:`` list."""

    name: str = field(metadata={"help": "Task name: letters, digits, _ (used for heads, adapters, metrics, folders)."})
    data: str = field(metadata={"help": "Labelled training data: a file, a folder or a Hub dataset id."})
    split: str = field(default="train", metadata={"help": "Split of data."})
    config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of data."})
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Labelled evaluation data. Default: hold out eval_fraction of data."},
    )
    eval_split: str = field(default="train", metadata={"help": "Split of eval_data."})
    eval_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of eval_data."})
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of data held out for evaluation when eval_data is not given."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Input text column (default: the recipe's)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column, for pair tasks."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: the recipe's)."})
    num_labels: int | None = field(default=None, metadata={"help": "Classes; inferred from the labels when unset."})
    class_names: list[str] | None = field(default=None, metadata={"help": "Names of integer class ids 0..n-1."})
    problem_type: str = field(
        default="classification", metadata={"help": "classification, or regression (one real-valued output)."}
    )
    loss_weight: float = field(default=1.0, metadata={"help": "Weight of this task's loss (loss_weighting: static)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most this many rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows."})


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


# Top-level fields of a single-task recipe that mean nothing with `tasks:`, and what to do instead.
_PER_TASK = "give each task its own under tasks[i]"
NOT_WITH_TASKS: dict[str, str] = {
    "source_data": "give each task its `data` under tasks[i]",
    "source_split": "use tasks[i].split",
    "source_config": "use tasks[i].config",
    "target_data": "multi-task training has no unlabelled target; list each labelled domain as a task",
    "target_split": "multi-task training has no target data",
    "target_config": "multi-task training has no target data",
    "eval_data": "give each task its `eval_data` under tasks[i]",
    "eval_split": "use tasks[i].eval_split",
    "eval_config": "use tasks[i].eval_config",
    "num_labels": _PER_TASK,
    "class_names": _PER_TASK,
    "source_eval_fraction": "use tasks[i].eval_fraction",
    "max_source_samples": "use tasks[i].max_train_samples",
    "max_target_samples": "multi-task training has no target data",
    "max_eval_samples": "use tasks[i].max_eval_samples",
    "streaming": "streaming reads one source/target pair as streams (docs/streaming.md); task lists are read whole",
    "streaming_sample_size": "streaming applies to single-task recipes only",
    "streaming_shuffle_buffer": "streaming applies to single-task recipes only",
    "method": "multi-task recipes train with their task losses; choose the sharing with `sharing`",
    "selection_validators": "label-free validators need target data; multi-task recipes have none",
    "selection_max_target_samples": "multi-task recipes have no target data",
    "metrics": "recipes with task lists report their family's own metrics (accuracy and macro F1 per task, "
               "few-shot accuracy, the lifelong accuracy matrix)",
    "tsne_plot": "the before/after t-SNE compares source and target; multi-task recipes have no target data",
    "tsne_rows": "the before/after t-SNE compares source and target; multi-task recipes have no target data",
    "freeze_backbone": "not supported with tasks; use sharing: soft_lora for a frozen base",
    "trainable_layers": "not supported with tasks",
    "gradual_unfreezing_steps": "not supported with tasks",
    "layerwise_lr_decay": "not supported with tasks",
    "merge_adapter": "each task is exported merged under output_dir/tasks/<name> already",
    "feature_module": "not used with tasks",
}
TASK_DEFAULTS = ("text_column", "text_pair_column", "label_column")
MULTITASK_FIELDS = tuple(f.name for f in dataclasses.fields(MultiTaskArguments))


@dataclass
class MultiTaskRecipe:
    """A resolved multi-task recipe: the shared parts (model, training, ``peft:``) as a :class:`Recipe`, the
    multi-task fields, and the tasks (with the top-level column defaults filled in)."""

    base: Recipe
    multitask: MultiTaskArguments
    tasks: list[TaskSpec]

    @property
    def training(self):
        return self.base.training

    @property
    def model(self):
        return self.base.model

    @property
    def peft(self) -> dict[str, Any] | None:
        return self.base.peft

    @property
    def max_length(self) -> int:
        return self.base.data.max_length

    def to_dict(self) -> dict[str, Any]:
        """The flat recipe, as ``hf-transfer train`` reads it back. Tokens are never included."""
        return flat_task_recipe(self.base, self.multitask, {"tasks": self.tasks})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def flat_task_recipe(base: Recipe, family_args: Any, task_lists: dict[str, list[TaskSpec]]) -> dict[str, Any]:
    """The flat form of a recipe made of task lists (multi-task, meta-learning, lifelong): the model fields, the
    family's own arguments, ``peft:``, each non-empty task list, then the training fields. Tokens are never
    included (``Recipe.to_dict`` leaves them out)."""
    m = base.model
    out: dict[str, Any] = {"model_name_or_path": m.model_name_or_path, "revision": m.revision,
                           "trust_remote_code": m.trust_remote_code, "max_length": base.data.max_length}
    out.update(dataclasses.asdict(family_args))
    if base.peft:
        out["peft"] = dict(base.peft)
    for name, tasks in task_lists.items():
        if tasks:
            out[name] = [{k: v for k, v in dataclasses.asdict(t).items() if v is not None} for t in tasks]
    flat = base.to_dict()
    for name in base.training_fields:
        if name in flat:
            out[name] = _plain(flat[name])
    return out


def parse_family_fields(raw: dict[str, Any], args_class: type, *, kind: str, also_known: set[str], doc: str):
    """Pop the fields of a recipe family's own dataclass (``args_class``) from ``raw``, parse them, and refuse any
    key left that no recipe class knows, naming the nearest valid one. What stays in ``raw`` is a plain recipe's.
    ``also_known`` are keys the caller has already taken out (e.g. ``tasks``), offered as suggestions."""
    own = _field_names(args_class)
    parser = _parser(args_class)
    values = {k: _coerce(parser, k, raw.pop(k), where="") for k in own if k in raw}
    try:
        (parsed,) = parser.parse_dict(values)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{kind} fields: {err}") from None
    valid = {"peft", *_field_names(*_FLAT_CLASSES)}
    for key in raw:
        if key not in valid:
            fix = unknown_field_fix(key, sorted(valid | set(also_known) | set(own)),
                                    fallback=f"see {doc} for the fields")
            raise RecipeError(f"{key}: unknown recipe field; {fix}")
    return parsed


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
        if key in raw:
            raise RecipeError(f"{key}: not used in a multi-task recipe (it has `tasks`); {hint}")

    multitask = parse_family_fields(raw, MultiTaskArguments, kind="multi-task", also_known={"tasks"},
                                    doc="docs/multitask.md")
    defaults = {k: raw[k] for k in TASK_DEFAULTS if raw.get(k) is not None}
    if raw.get("text_pair_column") is None:
        raw.pop("text_pair_column", None)
    base = load_recipe(raw, None)
    tasks = parse_tasks(tasks_raw, task_overrides, defaults={
        "text_column": base.data.text_column, "label_column": base.data.label_column,
        "text_pair_column": base.data.text_pair_column, **defaults,
    })
    _check_sharing(multitask, base)
    return MultiTaskRecipe(base, multitask, tasks)


def parse_tasks(entries: list[Any], overrides: dict[str, Any], *, defaults: dict[str, Any]) -> list[TaskSpec]:
    """Validate the ``tasks:`` entries; ``overrides`` are ``{"tasks.<name or index>.<field>": value}``."""
    names = _field_names(TaskSpec)
    parser = _parser(TaskSpec)
    entries = [dict(e) if isinstance(e, dict) else e for e in entries]
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RecipeError(f"tasks[{i}]: expected a mapping such as {{name: books, data: books.jsonl}}, "
                              f"got {entry!r}")
    for key, value in overrides.items():
        _, which, sub = (key.split(".", 2) + ["", ""])[:3]
        index = _task_position(entries, which, key)
        if not sub:
            raise RecipeError(f"{key}: name a field, e.g. --tasks.{which}.data FILE")
        entries[index][sub] = value
    tasks: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"tasks[{i}]."
        for key in entry:
            if key not in names:
                hint = nearest(key, names)
                fix = f"did you mean {hint!r}?" if hint else f"task fields: {', '.join(names)}"
                raise RecipeError(f"{where}{key}: unknown task field; {fix}")
        for required in ("name", "data"):
            if entry.get(required) in (None, ""):
                what = "a short name such as books" if required == "name" else "the task's labelled training data"
                raise RecipeError(f"{where}{required}: required; give {what}")
        values = {k: _coerce(parser, k, v, where=where) for k, v in entry.items()}
        for key, value in defaults.items():
            if values.get(key) is None and value is not None:
                values[key] = value
        try:
            (spec,) = parser.parse_dict(values)
        except RecipeError:
            raise
        except (ValueError, TypeError) as err:
            raise RecipeError(f"tasks[{i}]: {err}") from None
        _check_task(spec, i, seen)
        tasks.append(spec)
    return tasks


def _task_position(entries: list[dict[str, Any]], which: str, key: str) -> int:
    if which.isdigit():
        if int(which) >= len(entries):
            raise RecipeError(f"{key}: there are only {len(entries)} tasks (tasks[0]..tasks[{len(entries) - 1}])")
        return int(which)
    for i, entry in enumerate(entries):
        if entry.get("name") == which:
            return i
    known = [str(e.get("name")) for e in entries]
    hint = nearest(which, known)
    raise RecipeError(f"{key}: no task named {which!r}{f'; did you mean {hint!r}?' if hint else ''}")


def _check_task(spec: TaskSpec, i: int, seen: dict[str, int]) -> None:
    where = f"tasks[{i}]."
    if not TASK_NAME_PATTERN.fullmatch(spec.name) or spec.name == SHARED_ADAPTER:
        raise RecipeError(f"{where}name: {spec.name!r} is not a usable task name; use letters, digits and _, "
                          "starting with a letter (and not 'shared')")
    if spec.name in seen:
        raise RecipeError(f"{where}name: duplicate task name {spec.name!r} (also tasks[{seen[spec.name]}])")
    seen[spec.name] = i
    if spec.problem_type not in PROBLEM_TYPES:
        raise unknown_choice(f"{where}problem_type", spec.problem_type, PROBLEM_TYPES)
    if spec.problem_type == "regression":
        if spec.num_labels not in (None, 1):
            raise RecipeError(f"{where}num_labels: a regression task has one output; remove num_labels")
        if spec.class_names:
            raise RecipeError(f"{where}class_names: a regression task has no classes; remove class_names")
    elif spec.num_labels is not None and spec.num_labels < 2:
        raise RecipeError(f"{where}num_labels: must be at least 2, got {spec.num_labels}")
    if spec.class_names and spec.num_labels is not None and len(spec.class_names) != spec.num_labels:
        raise RecipeError(f"{where}class_names: {len(spec.class_names)} names for num_labels={spec.num_labels}")
    if not 0 < spec.eval_fraction < 1:
        raise RecipeError(f"{where}eval_fraction: must be in (0, 1), got {spec.eval_fraction}")
    if spec.loss_weight < 0:
        raise RecipeError(f"{where}loss_weight: must be >= 0, got {spec.loss_weight}")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(spec, name)
        if value is not None and value <= 0:
            raise RecipeError(f"{where}{name}: must be > 0, got {value}")


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
