"""Meta-learning recipes: a ``tasks:`` list to meta-train on, ``test_tasks:`` held out, and the episode fields.

```yaml
model_name_or_path: sentence-transformers/all-MiniLM-L6-v2
meta_method: protonet        # protonet | fomaml | reptile | hypernet | contrastive
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

from ..errors import RecipeError, unknown_choice
from ..tasklists.recipe import (  # noqa: F401  (TaskListRecipe, resolve_recipe ... also importable from here)
    TaskListRecipe,
    TaskSpec,
    load_task_list_recipe,
    resolve_recipe,
)
from .contrastive import CONTRASTIVE_PARAMS
from .learner import ADAPT_METHODS, META_METHODS
from .maml import HEAD_INITS, INNER_PARAMS
from .protonet import DISTANCES, POOLINGS


@dataclass
class MetaArguments:
    """Episodes, the meta-learning method and the few-shot evaluation."""

    meta_method: str = field(
        default="protonet",
        metadata={"help": "protonet (prototypical networks), fomaml (first-order MAML), reptile, hypernet (a "
                          "task-conditioned head generated from the support set), or contrastive (the cosine loss "
                          "over every pair of an episode's rows; adapts with contrastive by default)."},
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
        metadata={"help": "How to adapt at evaluation: protonet, maml, hypernet, finetune (every weight), probe "
                          "(a linear head on frozen embeddings) or contrastive (contrastive pairs, then a "
                          "logistic-regression head) (default: the meta_method's own)."},
    )
    contrastive_iterations: int = field(
        default=5, metadata={"help": "contrastive: positive pairs (and as many negatives) per labelled row."})
    contrastive_batch_size: int = field(default=16, metadata={"help": "contrastive: pairs per step."})
    contrastive_lr: float | None = field(
        default=None, metadata={"help": "contrastive: AdamW learning rate (default 2e-5; 1e-3 with lora)."})
    contrastive_epochs: int = field(default=1, metadata={"help": "contrastive: passes over the pairs."})
    contrastive_params: str = field(
        default="all", metadata={"help": "contrastive: what adapts, all (every encoder weight) or lora (an adapter)."})
    contrastive_lora_r: int = field(default=8, metadata={"help": "contrastive with lora: the adapter's rank."})
    contrastive_normalize: bool = field(
        default=True, metadata={"help": "contrastive: L2-normalise embeddings before the logistic-regression head."})

    def __post_init__(self):
        checks = (("meta_method", META_METHODS), ("distance", DISTANCES), ("pooling", POOLINGS),
                  ("inner_params", INNER_PARAMS), ("head_init", HEAD_INITS))
        for name, choices in checks:
            if getattr(self, name) not in choices:
                raise unknown_choice(name, getattr(self, name), choices)
        if self.contrastive_params not in CONTRASTIVE_PARAMS:
            raise unknown_choice("contrastive_params", self.contrastive_params, CONTRASTIVE_PARAMS)
        for name in ("contrastive_iterations", "contrastive_batch_size", "contrastive_epochs", "contrastive_lora_r"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.contrastive_lr is not None and self.contrastive_lr <= 0:
            raise RecipeError(f"contrastive_lr: must be > 0, got {self.contrastive_lr}")
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


class MetaRecipe(TaskListRecipe):
    """A meta-learning recipe (``meta_method`` present)."""

    family = "meta"

    @property
    def meta(self) -> MetaArguments:
        return self.args

    @property
    def test_tasks(self) -> list[TaskSpec]:
        return self.task_lists.get("test_tasks", [])


def load_meta_recipe(raw: dict[str, Any], overrides: dict[str, Any]) -> MetaRecipe:
    """Parse a recipe with ``meta_method`` (see the module docstring)."""
    base, args, lists = load_task_list_recipe(raw, overrides, args_class=MetaArguments, lists=("tasks", "test_tasks"),
                                              kind="meta-learning", doc="docs/meta_lifelong.md",
                                              accepts=("trainable_layers",))
    if base.peft is not None and base.peft.get("peft_type") != "LORA":
        raise RecipeError(f"peft.peft_type: meta-learning adapts LoRA adapters, got {base.peft['peft_type']!r}")
    layers = base.model.trainable_layers
    if layers is not None and base.peft is not None:
        raise RecipeError("trainable_layers: with a peft block only the LoRA parameters train (the base is frozen "
                          "already); drop one of the two")
    if layers == 0 and args.meta_method != "hypernet":
        raise RecipeError(f"trainable_layers: 0 freezes the whole encoder, and meta_method {args.meta_method} "
                          "meta-trains the encoder alone; use 1 or more (or meta_method: hypernet, whose head trains)")
    return MetaRecipe(base, args, lists)
