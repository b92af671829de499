"""Transfer methods in a multi-task recipe: ``method: [dann]`` (and its ``dann: {...}`` block) as in a flat recipe.

Each training batch holds one task's rows (:mod:`hf_transfer.multitask.sampling`); when the recipe's methods learn
from unlabelled target rows, every task has its own ``target_data`` and the batch holds the task's labelled rows
followed by the same number of its target rows (``domain`` 0 / 1), paired and collated by the flat path's
:func:`~hf_transfer.data.pair_with_target` and :class:`~hf_transfer.data.TransferCollator`. The method loss is
computed by the flat path's method stack (:class:`~hf_transfer.trainer.MethodStack`, in
:class:`~hf_transfer.multitask.trainer.MultiTaskTrainer`) on the feature the batch's task head receives: the input
of that head's output layer, found in each head by :func:`~hf_transfer.backbones.find_feature_module`. One set of
method modules serves every task (one DANN discriminator sees every task's source and target features).

Methods that need what a multi-task model does not have (one classifier of one label space, one flat source table)
are refused with the reason, by name here, and any other method with a ``prepare`` hook or extra batch keys
(it reads the flat run's context) unless it is listed in :data:`PREPARED_PER_TASK`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import DataError, RecipeError
from ..methods import get_method_spec

#: Methods that cannot train inside a multi-task model, and why.
UNSUPPORTED: dict[str, str] = {
    "lwf": "it runs a frozen copy of a single-task classifier on each batch, and a multi-task model needs each row's "
           "task; train the task alone with a flat recipe",
    "mlm": "it adds a masked-language-model head and masked copies of the target rows to the batch, which the "
           "one-task-per-batch schedule does not carry; train the task alone with a flat recipe",
    "instance_weighting": "it weights the rows of one source table against one target; train the task alone with a "
                          "flat recipe",
    "label_relation": "it initialises one classifier head from one source model's classes; train the task alone "
                      "with a flat recipe",
    "graph_laplacian": "it ties the classes of one classifier through one label graph; train the task alone with a "
                       "flat recipe",
}
#: Methods whose ``prepare`` hook works on a multi-task model (it is handed a view of the model whose backbone is
#: the shared encoder: see :func:`hf_transfer.multitask.freezing.model_view`).
PREPARED_PER_TASK = ("l2sp",)
#: Methods whose modules are built for one number of classes: every task must then have the same classes.
SAME_CLASSES = ("cdan",)


def loss_methods(names: list[str]) -> list[str]:
    """The methods of ``names`` that add a loss (``finetune`` adds none)."""
    return [n for n in names if get_method_spec(n).method_class is not None]


def check_task_methods(methods: list[str], tasks: list[Any], *, from_multitask_model: str | None = None) -> None:
    """Recipe-time checks of ``method`` against the tasks: supported here, and target data where it is needed (and
    only there). Raises a one-line :class:`RecipeError`."""
    for name in methods:
        spec = get_method_spec(name)
        if name in UNSUPPORTED:
            raise RecipeError(f"method: {name} does not work in a multi-task recipe: {UNSUPPORTED[name]}")
        cls = spec.method_class
        reads_context = spec.prepare is not None or (cls is not None and cls.batch_keys)
        if reads_context and name not in PREPARED_PER_TASK:
            raise RecipeError(f"method: {name} does not work in a multi-task recipe: it prepares itself from a flat "
                              "run's data and model; train the task alone with a flat recipe")
    needing = [n for n in methods if get_method_spec(n).needs_target]
    for i, task in enumerate(tasks):
        if needing and not task.target_data:
            raise RecipeError(f"tasks[{i}].target_data: method {needing[0]} learns from unlabelled target rows; give "
                              f"task {task.name!r} its own target_data (every task needs one), or drop {needing[0]}")
        if task.target_data and not needing:
            raise RecipeError(f"tasks[{i}].target_data: no method in `method` learns from unlabelled target rows; "
                              "add one (e.g. method: [dann]) or remove target_data")
        if task.target_data and task.problem_type == "regression":
            raise RecipeError(f"tasks[{i}].target_data: task {task.name!r} is a regression task; the target-data "
                              "methods align classifiers' features and outputs, so give target_data to "
                              "classification tasks only")
    if methods and loss_methods(methods) and from_multitask_model:
        raise RecipeError("method: not used with from_multitask_model (only the new tasks' heads and adapters "
                          "train there); train the new tasks with method, or drop it")


def head_feature_modules(model: nn.Module, tasks: list[str], feature_module: str | None = None
                         ) -> dict[str, nn.Module]:
    """``{task: module}``: in each task's head, the module whose input is the feature the head classifies (its output
    layer, or the module ``feature_module`` names)."""
    from ..backbones import find_feature_module

    modules = {}
    for name in tasks:
        head = model.heads[name]
        _, modules[name] = find_feature_module(head, head.config.num_labels, feature_module)
    return modules


def build_task_methods(recipe: Any, model: nn.Module, tasks: list[Any]):
    """The recipe's methods, built once for every trained task. Returns ``({name: method}, {task: feature module})``,
    both empty when no method adds a loss."""
    from ..errors import UserError

    names = loss_methods(recipe.base.methods.method)
    if not names:
        return {}, {}
    modules = head_feature_modules(model, [t.name for t in tasks], recipe.model.feature_module)
    dims = {name: getattr(m, "in_features", None) for name, m in modules.items()}
    if any(d is None for d in dims.values()):
        raise UserError("feature_module: the chosen module has no in_features; name a linear layer of the heads")
    if len(set(dims.values())) > 1:
        raise UserError(f"feature_module: the task heads receive features of different widths {dims}; name a module "
                        "whose input has the same width in every head")
    classes = {t.name: t.num_labels for t in tasks}
    for name in names:
        if name in SAME_CLASSES and len(set(classes.values())) > 1:
            first = tasks[0]
            other = next(i for i, t in enumerate(tasks) if t.num_labels != first.num_labels)
            raise DataError(f"tasks[{other}].data: method {name} is built for one number of classes, but task "
                            f"{tasks[other].name!r} has {tasks[other].num_labels} and {first.name!r} "
                            f"{first.num_labels}; give every task the same classes or drop {name}")
    feature_dim = next(iter(dims.values()))
    num_labels = max(classes.values())
    methods = {
        name: get_method_spec(name).method_class(recipe.base.method_configs[name], feature_dim=feature_dim,
                                                  num_labels=num_labels)
        for name in names
    }
    return methods, modules


def prepare_task_methods(recipe: Any, methods: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Run the ``prepare`` hooks of the methods listed in :data:`PREPARED_PER_TASK` (``context["model"]`` is the
    multi-task model's view with the shared encoder as its backbone)."""
    for name in recipe.base.methods.method:
        prepare = get_method_spec(name).prepare
        if prepare is not None and name in methods:
            context = prepare(recipe.base.method_configs[name], {**context, "methods": methods})
    return context
