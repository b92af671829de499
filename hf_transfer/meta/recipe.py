"""Meta-learning recipes: a ``tasks:`` list to meta-train on, ``test_tasks:`` held out, and the episode fields.

```yaml
model_name_or_path: sentence-transformers/all-MiniLM-L6-v2
meta_method: protonet        # protonet | fomaml | reptile | hypernet
n_way: 2
k_shot: 8
n_query: 16
tasks:                       # meta-training tasks (a domain, a dataset ...)
  - {name: books, data: ../shared/data/fdu_mtl/books.train.jsonl}
test_tasks:                  # few-shot evaluation: shots from data, queries from eval_data
  - {name: music, data: ../shared/data/fdu_mtl/music.train.jsonl, eval_data: ../shared/data/fdu_mtl/music.test.jsonl}
max_steps: 200               # outer steps (one episode per process each)
learning_rate: 2.0e-5
```

The ``tasks`` / ``test_tasks`` entries are multi-task task entries (:class:`hf_transfer.multitask.recipe.TaskSpec`);
model fields, ``max_length``, ``peft:`` and the ``TrainingArguments`` fields are read as in every recipe. A task field
is overridden as ``--tasks.<name>.<field>`` (``--test_tasks.<name>.<field>``). :func:`load_task_list_recipe` is the
shared parser of recipes made of task lists (the lifelong recipes use it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import RecipeError, unknown_choice
from ..multitask.recipe import (
    NOT_WITH_TASKS,
    MultiTaskRecipe,
    TaskSpec,
    flat_task_recipe,
    parse_family_fields,
    parse_tasks,
)
from ..recipe import Recipe, _merge_dotted
from .learner import ADAPT_METHODS, META_METHODS
from .maml import HEAD_INITS, INNER_PARAMS
from .protonet import DISTANCES, POOLINGS


@dataclass
class MetaArguments:
    """Episodes, the meta-learning method and the few-shot evaluation."""

    meta_method: str = field(
        default="protonet",
        metadata={"help": "protonet (prototypical networks), fomaml (first-order MAML), reptile, or hypernet (a "
                          "task-conditioned head generated from the support set)."},
    )
    n_way: int | None = field(default=None, metadata={"help": "Classes per episode (default: all of a task's)."})
    k_shot: int = field(default=8, metadata={"help": "Support rows per class in a meta-training episode."})
    n_query: int = field(default=16, metadata={"help": "Query rows per class in a meta-training episode."})
    distance: str = field(default="euclidean", metadata={"help": "protonet: euclidean (squared) or cosine."})
    temperature: float | None = field(
        default=None, metadata={"help": "protonet: logits are divided by it (default 1 for euclidean, 0.1 cosine)."}
    )
    pooling: str = field(default="mean", metadata={"help": "Text embedding: mean of the token states, or cls."})
    episodes_per_device: int = field(
        default=1, metadata={"help": "Episodes each process trains on per outer step; their meta-gradients are "
                             "averaged (the meta-batch is episodes_per_device x processes, like a batch size)."})
    inner_steps: int = field(default=5, metadata={"help": "fomaml/reptile: SGD steps on the support set."})
    inner_lr: float = field(default=1e-2, metadata={"help": "fomaml/reptile: inner-loop SGD learning rate."})
    inner_params: str = field(
        default="all",
        metadata={"help": "fomaml/reptile: what the inner loop adapts besides the episode head: all (every "
                          "trainable encoder parameter; only LoRA ones with peft) or head (the head only, ANIL)."},
    )
    head_init: str = field(
        default="prototypes", metadata={"help": "fomaml/reptile: episode head from the support prototypes, or zero."}
    )
    eval_shots: list[int] = field(
        default_factory=lambda: [4, 8, 16],
        metadata={"help": "Few-shot evaluation after training: K values (shots per class); [] skips it."},
    )
    eval_episodes: int = field(default=20, metadata={"help": "Few-shot evaluation: episodes per task and K."})
    eval_n_query: int = field(default=32, metadata={"help": "Few-shot evaluation: query rows per class."})
    eval_adapt: str | None = field(
        default=None,
        metadata={"help": "How to adapt at evaluation: protonet, maml, hypernet, finetune (every weight) or probe "
                          "(a linear head on frozen embeddings) (default: the meta_method's own)."},
    )

    def __post_init__(self):
        checks = (("meta_method", META_METHODS), ("distance", DISTANCES), ("pooling", POOLINGS),
                  ("inner_params", INNER_PARAMS), ("head_init", HEAD_INITS))
        for name, choices in checks:
            if getattr(self, name) not in choices:
                raise unknown_choice(name, getattr(self, name), choices)
        if self.eval_adapt is not None and self.eval_adapt not in ADAPT_METHODS:
            raise unknown_choice("eval_adapt", self.eval_adapt, ADAPT_METHODS)
        for name in ("k_shot", "n_query", "eval_episodes", "eval_n_query", "episodes_per_device"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.eval_episodes < 2:
            raise RecipeError("eval_episodes: a 95% interval needs at least 2 episodes; use 20 or more")
        if self.n_way is not None and self.n_way < 2:
            raise RecipeError(f"n_way: must be >= 2, got {self.n_way}")
        if self.inner_steps < 0 or self.inner_lr <= 0:
            raise RecipeError("inner_steps must be >= 0 and inner_lr > 0")
        if self.meta_method == "reptile" and self.inner_params == "head":
            raise RecipeError("inner_params: reptile moves the encoder toward its inner-loop weights; with head only "
                              "there is nothing to move. Use inner_params: all (or meta_method: fomaml)")
        if self.meta_method == "reptile" and self.inner_steps < 1:
            raise RecipeError("inner_steps: reptile needs at least one inner step")
        if any(k < 1 for k in self.eval_shots):
            raise RecipeError(f"eval_shots: every K must be >= 1, got {self.eval_shots}")


@dataclass
class TaskListRecipe:
    """A recipe made of task lists: the shared parts (model, training, ``peft:``) as a :class:`Recipe`, the
    recipe kind's own arguments, and the task lists by name (``tasks``, ``test_tasks`` ...)."""

    base: Recipe
    args: Any
    task_lists: dict[str, list[TaskSpec]]

    # The shared parts read exactly as a multi-task recipe's.
    training = MultiTaskRecipe.training
    model = MultiTaskRecipe.model
    peft = MultiTaskRecipe.peft
    max_length = MultiTaskRecipe.max_length

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.task_lists["tasks"]

    def to_dict(self) -> dict[str, Any]:
        """The flat recipe, as ``hf-transfer train`` reads it back. Tokens are never included."""
        return flat_task_recipe(self.base, self.args, self.task_lists)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


class MetaRecipe(TaskListRecipe):
    """A meta-learning recipe (``meta_method`` present)."""

    @property
    def meta(self) -> MetaArguments:
        return self.args

    @property
    def test_tasks(self) -> list[TaskSpec]:
        return self.task_lists.get("test_tasks", [])


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
                          doc: str) -> tuple[Recipe, Any, dict[str, list[TaskSpec]]]:
    """Parse a recipe with task lists: the shared fields through :func:`hf_transfer.recipe.load_recipe`, the
    ``args_class`` fields, and each list of ``lists`` (``--<list>.<name or index>.<field>`` overrides)."""
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
        if key in raw:
            if key == "method":
                hint = f"a {kind} recipe trains with its own objective; see {doc}"
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
    return base, args, task_lists


def load_meta_recipe(raw: dict[str, Any], overrides: dict[str, Any]) -> MetaRecipe:
    """Parse a recipe with ``meta_method`` (see the module docstring)."""
    base, args, lists = load_task_list_recipe(raw, overrides, args_class=MetaArguments, lists=("tasks", "test_tasks"),
                                              kind="meta-learning", doc="docs/meta_lifelong.md")
    if base.peft is not None and base.peft.get("peft_type") != "LORA":
        raise RecipeError(f"peft.peft_type: meta-learning adapts LoRA adapters, got {base.peft['peft_type']!r}")
    return MetaRecipe(base, args, lists)
