"""Recipes made of task lists, shared by every family that has them (multi-task, meta-learning, lifelong).

* :class:`TaskSpec`: one entry of a ``tasks:`` list (its data, columns, labels, problem type);
* :func:`parse_tasks`: validate the entries, with ``--tasks.<name or index>.<field>`` overrides;
* :class:`TaskListRecipe`: the shared parts (model, training, ``peft:``) as a flat :class:`~hf_transfer.recipe.Recipe`,
  the family's own fields, and the task lists by name;
* :func:`load_task_list_recipe`: the parser each family's loader calls; :func:`parse_family_fields` reads a family's
  own dataclass and refuses unknown keys with the nearest name;
* :func:`flat_task_recipe`: the flat form written to ``recipe.yaml``.

Every problem is a one-line :class:`~hf_transfer.errors.RecipeError` naming ``tasks[i].field``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from ..errors import RecipeError, nearest, unknown_choice, unknown_field_fix
from ..recipe import _FLAT_CLASSES, ModelArguments, Recipe, _coerce, _field_names, _merge_dotted, _parser, _plain

#: What a task entry may be: a classifier, or one real-valued output.
PROBLEM_TYPES = ("classification", "regression")
#: Task names become head, adapter, metric and folder names.
TASK_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Reserved: the multi-task model's shared adapter has this name.
SHARED_ADAPTER = "shared"


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
    target_data: str | None = field(
        default=None,
        metadata={"help": "Unlabelled target data of this task, for a method that learns from it (dann, mmd ...; "
                          "multi-task recipes). Its labels, if any, are never read."},
    )
    target_split: str = field(default="train", metadata={"help": "Split of target_data."})
    target_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of target_data."})
    max_target_samples: int | None = field(default=None, metadata={"help": "Use at most this many target rows."})


# Top-level fields of a single-task recipe that mean nothing with `tasks:`, and what to do instead.
_PER_TASK = "give each task its own under tasks[i]"
NOT_WITH_TASKS: dict[str, str] = {
    "source_data": "give each task its `data` under tasks[i]",
    "source_split": "use tasks[i].split",
    "source_config": "use tasks[i].config",
    "target_data": "give each task its own unlabelled target under tasks[i].target_data",
    "target_split": "use tasks[i].target_split",
    "target_config": "use tasks[i].target_config",
    "eval_data": "give each task its `eval_data` under tasks[i]",
    "eval_split": "use tasks[i].eval_split",
    "eval_config": "use tasks[i].eval_config",
    "num_labels": _PER_TASK,
    "class_names": _PER_TASK,
    "source_eval_fraction": "use tasks[i].eval_fraction",
    "max_source_samples": "use tasks[i].max_train_samples",
    "max_target_samples": "use tasks[i].max_target_samples",
    "max_eval_samples": "use tasks[i].max_eval_samples",
    "streaming": "streaming reads one source/target pair as streams (docs/streaming.md); task lists are read whole",
    "streaming_sample_size": "streaming applies to single-task recipes only",
    "streaming_shuffle_buffer": "streaming applies to single-task recipes only",
    "method": "recipes with task lists train with their family's own objective",
    "selection_validators": "the label-free validators score one target domain; recipes with task lists have none "
                            "(a multi-task run's per-task target data trains its methods only)",
    "selection_max_target_samples": "the label-free validators apply to flat recipes only",
    "metrics": "recipes with task lists report their family's own metrics (accuracy and macro F1 per task, "
               "few-shot accuracy, the lifelong accuracy matrix)",
    "cache_frozen": "the frozen-prefix cache serves the flat trainer only (docs/performance.md); task lists run "
                    "their frozen layers every step",
    "tsne_plot": "the before/after t-SNE compares one source and one target; flat recipes only",
    "tsne_rows": "the before/after t-SNE compares one source and one target; flat recipes only",
    "freeze_backbone": "freezing plans apply to multi-task and lifelong recipes only",
    "trainable_layers": "freezing plans apply to multi-task and lifelong recipes only",
    "gradual_unfreezing_steps": "freezing plans apply to multi-task and lifelong recipes only",
    "layerwise_lr_decay": "freezing plans apply to multi-task and lifelong recipes only",
    "merge_adapter": "each task is exported merged under output_dir/tasks/<name> already",
    "feature_module": "not used with tasks",
    # Task lists are text tasks (their loaders tokenise text_column); refused, never silently trained on text.
    "image_column": "recipes with task lists train text tasks only; train image tasks one at a time with a flat "
                    "recipe (docs/vision.md)",
    "image_size": "recipes with task lists train text tasks only (docs/vision.md)",
    "image_augmentation": "recipes with task lists train text tasks only (docs/vision.md)",
}
TASK_DEFAULTS = ("text_column", "text_pair_column", "label_column")
#: The freezing plans of a flat recipe (hf_transfer.backbones): which backbone layers train, and at what rate.
FREEZING_FIELDS = ("freeze_backbone", "trainable_layers", "gradual_unfreezing_steps", "layerwise_lr_decay")
#: Per-task fields that only a multi-task recipe with a target-data method uses.
TARGET_TASK_FIELDS = ("target_data", "target_config", "max_target_samples")


@dataclass
class TaskListRecipe:
    """A recipe made of task lists: the shared parts (model, training, ``peft:``) as a :class:`Recipe`, the
    recipe kind's own arguments, and the task lists by name (``tasks``, ``test_tasks`` ...)."""

    base: Recipe
    args: Any
    task_lists: dict[str, list[TaskSpec]]

    #: the registered family (hf_transfer.families) a subclass belongs to
    family: ClassVar[str] = ""

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

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.task_lists["tasks"]

    def to_dict(self) -> dict[str, Any]:
        """The flat recipe, as ``hf-transfer train`` reads it back. Tokens are never included."""
        return flat_task_recipe(self.base, self.args, self.task_lists)

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
    # The freezing plan and the transfer methods, where the family accepts them and the recipe sets them.
    defaults = ModelArguments(model_name_or_path=m.model_name_or_path)
    for name in FREEZING_FIELDS:
        if getattr(m, name) != getattr(defaults, name):
            out[name] = getattr(m, name)
    if list(base.methods.method) != ["finetune"]:
        out["method"] = list(base.methods.method)
        for name, config in base.method_configs.items():
            out[name] = dataclasses.asdict(config)
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
    for name in ("max_train_samples", "max_eval_samples", "max_target_samples"):
        value = getattr(spec, name)
        if value is not None and value <= 0:
            raise RecipeError(f"{where}{name}: must be > 0, got {value}")


def resolve_recipe(recipe: Any, overrides: dict[str, Any], cls: type, *, key: str, kind: str) -> Any:
    """``recipe`` as a parsed ``cls`` (a path, mapping or ``None`` is loaded with ``overrides``), or a clear error
    when it is another kind of recipe."""
    from ..errors import UserError
    from ..recipe import load_recipe

    if isinstance(recipe, cls):
        if overrides:
            raise UserError("overrides: pass them with a recipe path or mapping, not with a parsed recipe")
        return recipe
    parsed = load_recipe(recipe, overrides)
    if not isinstance(parsed, cls):
        raise UserError(f"{key}: this recipe has none; a {kind} recipe sets {key} (see docs/meta_lifelong.md)")
    return parsed


def load_task_list_recipe(raw: dict[str, Any], overrides: dict[str, Any], *, args_class: type,
                          lists: tuple[str, ...], required: tuple[str, ...] = ("tasks",), kind: str,
                          doc: str, accepts: tuple[str, ...] = ()) -> tuple[Recipe, Any, dict[str, list[TaskSpec]]]:
    """Parse a recipe with task lists: the shared fields through :func:`hf_transfer.recipe.load_recipe`, the
    ``args_class`` fields, and each list of ``lists`` (``--<list>.<name or index>.<field>`` overrides). ``accepts``:
    the flat fields of :data:`NOT_WITH_TASKS` this family uses after all (e.g. :data:`FREEZING_FIELDS`)."""
    from ..recipe import load_recipe

    list_overrides = {k: v for k, v in overrides.items() if k.split(".", 1)[0] in lists and "." in k}
    raw = _merge_dotted(dict(raw))
    for key, value in _merge_dotted({k: v for k, v in overrides.items() if k not in list_overrides}).items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    entries: dict[str, list] = {}
    for name in lists:
        value = raw.pop(name, None)
        if isinstance(value, str):  # given on the command line as YAML text
            value = yaml.safe_load(value)
        if value is None and name not in required:
            entries[name] = []
            continue
        if not isinstance(value, list) or not value:
            raise RecipeError(f"{name}: expected a list of task entries (- name: ..., data: ...), got "
                              f"{type(value).__name__}; see {doc}")
        entries[name] = value
    for key, hint in NOT_WITH_TASKS.items():
        if key in raw and key not in accepts:
            if key == "method":
                hint = f"a {kind} recipe trains with its own objective; see {doc}"
            elif key in FREEZING_FIELDS:
                hint = "freezing plans apply to multi-task and lifelong recipes (docs/multitask.md, What composes)"
            raise RecipeError(f"{key}: not used in a {kind} recipe; {hint}")
    args = parse_family_fields(raw, args_class, kind=kind, also_known=set(lists), doc=doc)
    defaults = {k: raw[k] for k in ("text_column", "text_pair_column", "label_column") if raw.get(k) is not None}
    if raw.get("text_pair_column") is None:
        raw.pop("text_pair_column", None)
    base = load_recipe(raw, None)
    column_defaults = {"text_column": base.data.text_column, "label_column": base.data.label_column,
                       "text_pair_column": base.data.text_pair_column, **defaults}
    task_lists = {}
    for name, value in entries.items():
        own_overrides = {k: v for k, v in list_overrides.items() if k.startswith(f"{name}.")}
        try:
            task_lists[name] = parse_tasks(value, own_overrides, defaults=column_defaults) if value else []
        except RecipeError as err:
            message = str(err)
            raise RecipeError(message.replace("tasks[", f"{name}[", 1) if name != "tasks" else message) from None
        for i, spec in enumerate(task_lists[name]):
            if spec.problem_type != "classification":
                raise RecipeError(f"{name}[{i}].problem_type: {kind} tasks are classification tasks")
            refuse_target_fields(spec, f"{name}[{i}]", kind=kind)
    return base, args, task_lists


def refuse_target_fields(spec: TaskSpec, where: str, *, kind: str) -> None:
    """Refuse a task's unlabelled target data in a family that has no method to learn from it (never ignored)."""
    for key in TARGET_TASK_FIELDS:
        if getattr(spec, key) is not None:
            raise RecipeError(f"{where}.{key}: not used in a {kind} recipe; unlabelled target data per task is for "
                              "multi-task recipes with a method such as dann (docs/multitask.md)")
