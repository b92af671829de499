"""``train_multitask``: a recipe with ``tasks:`` in, a multi-task model folder (and one plain model per task) out.

``hf-transfer train recipes/multitask/hard.yaml`` and ``hf_transfer.train(...)`` come here when the recipe has a
``tasks`` list. The output folder holds:

* the whole :class:`~hf_transfer.multitask.MultiTaskModel` (``config.json`` + ``model.safetensors``; after
  ``import hf_transfer.multitask``, ``AutoModel.from_pretrained(output_dir)`` loads it), the tokenizer,
  ``metrics.json`` (``<task>/accuracy`` for every task, ``mean_accuracy``), ``recipe.yaml`` and a model card;
* ``tasks/<name>/``: each task alone as a plain ``AutoModelForSequenceClassification`` (adapters merged) with its
  tokenizer, metrics and card, which ``transformers.pipeline`` loads without hf_transfer.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoModel

from ..backbones import count_parameters, load_tokenizer
from ..cards import (
    PROJECT_URL,
    CardContent,
    EvalSet,
    build_card,
    display_path,
    hub_base_model,
    hub_link,
    role_metrics,
    transfer_card,
    where,
)
from ..data import accuracy_metrics
from ..errors import DataError, RecipeError, UserError
from ..families import TrainResult
from ..hub import (
    PushRequest,
    atomic_write_json,
    atomic_write_text,
    finish_export,
    save_trainer_results,
    staging_dir,
)
from ..preamble import begin_run
from .data import MultiTaskCollator, TaskData, concatenate_tasks, load_tasks, pair_tasks_with_targets, tokenize_tasks
from .freezing import apply_freezing, gradual_unfreezing_callbacks, model_view
from .methods import build_task_methods, prepare_task_methods
from .modeling import LORA_FIELDS, MultiTaskModel
from .recipe import MultiTaskRecipe
from .trainer import MultiTaskTrainer

logger = logging.getLogger(__name__)

TASKS_FOLDER = "tasks"


def load_multitask_model(path: str | os.PathLike) -> MultiTaskModel:
    """A trained multi-task model folder (one written by :func:`train_multitask`)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"from_multitask_model: {str(path)!r} has no config.json; point it at a multi-task output_dir")
    try:
        model = AutoModel.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"from_multitask_model: cannot load {str(path)!r}: {str(err).splitlines()[0]}") from None
    if not isinstance(model, MultiTaskModel):
        raise UserError(f"from_multitask_model: {str(path)!r} holds a {type(model).__name__}, not a multi-task model")
    return model


def _build_model(recipe: MultiTaskRecipe, tasks: list[TaskData]) -> tuple[MultiTaskModel, list[TaskData], str]:
    """The model to train, the tasks that train, and where the tokenizer comes from."""
    mt = recipe.multitask
    if mt.from_multitask_model:
        model = load_multitask_model(mt.from_multitask_model)
        new = []
        for i, task in enumerate(tasks):
            if task.name not in model.task_names:
                new.append(task)
                continue
            have = model.task_config(task.name)
            if (have["problem_type"], have["num_labels"]) != (task.spec.problem_type, task.num_labels):
                raise DataError(
                    f"tasks[{i}].num_labels: task {task.name!r} of from_multitask_model is a {have['problem_type']} "
                    f"head with {have['num_labels']} outputs; the data gives {task.num_labels}"
                )
        if not new:
            raise RecipeError(f"tasks: every task is already in from_multitask_model ({', '.join(model.task_names)});"
                              " list a new task to add")
        for task in new:
            model.add_task(**task.model_task())
        model.set_trainable([t.name for t in new])  # the others are frozen: their outputs cannot change
        return model, new, mt.from_multitask_model
    lora = None
    if recipe.peft:
        lora = {k: v for k, v in recipe.peft.items() if k in LORA_FIELDS}
    model = MultiTaskModel.from_encoder(
        recipe.model.model_name_or_path,
        tasks=[t.model_task() for t in tasks],
        sharing=mt.sharing,
        revision=recipe.model.revision,
        trust_remote_code=recipe.model.trust_remote_code,
        lora_config=lora,
        loss_weighting=mt.loss_weighting,
        l2_tie_weight=mt.l2_tie_weight,
        orthogonality_weight=mt.orthogonality_weight,
        adversarial_weight=mt.adversarial_weight,
    )
    return model, tasks, recipe.model.model_name_or_path


def train_multitask(recipe: MultiTaskRecipe, *, callbacks: list | None = None):
    """Train a multi-task recipe end to end; returns a :class:`hf_transfer.families.TrainResult`."""
    start = begin_run(recipe)  # snapshot, push request, resume, seed (hf_transfer/preamble.py)
    recipe_yaml, push_requested, args = start.recipe_yaml, start.push, recipe.training
    # One task per step: the other tasks' heads (and adapters or encoders) sit the step out. Every process trains the
    # same task at a step, so they sit out together.
    # (Gradual unfreezing, whose layers join training mid-run, needs the same.)
    args.ddp_find_unused_parameters = True

    tasks = load_tasks(recipe.tasks, seed=args.seed)  # every data check, before a model is loaded
    model, trained, tokenizer_source = _build_model(recipe, tasks)
    apply_freezing(model, recipe.model)  # freeze_backbone / trainable_layers, on every encoder
    methods, feature_modules = build_task_methods(recipe, model, trained)
    tokenizer = load_tokenizer(tokenizer_source, revision=None if recipe.multitask.from_multitask_model
                               else recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code)
    with args.main_process_first(desc="tokenizing"):
        tokenize_tasks(tasks, tokenizer, max_length=recipe.max_length,
                       task_ids=[model.task_index(t.name) for t in tasks],
                       progress=not args.disable_tqdm)
    problem_types = {t["name"]: t["problem_type"] for t in model.config.tasks}
    regression = [i for i, t in enumerate(model.config.tasks) if t["problem_type"] == "regression"]
    metrics: dict[str, Any] = {}
    if methods:  # e.g. l2sp anchors at the weights before training; its hook sees the encoder as the backbone
        prepare_task_methods(recipe, methods, {"model": model_view(model), "tokenizer": tokenizer, "args": args,
                                               "metrics": metrics, "feature_module": None, "data": None})
    pair_tasks_with_targets(trained, seed=args.seed)  # each task's rows with its own target rows
    callbacks = list(callbacks or []) + gradual_unfreezing_callbacks(model, recipe.model.gradual_unfreezing_steps)
    trainer = MultiTaskTrainer(
        model=model,
        args=args,
        train_dataset=concatenate_tasks(trained),
        eval_dataset={t.name: t.eval for t in tasks},
        processing_class=tokenizer,
        data_collator=MultiTaskCollator(tokenizer, regression_tasks=regression),
        compute_metrics=accuracy_metrics,
        callbacks=callbacks,
        methods=methods,
        feature_modules=feature_modules,
        layerwise_lr_decay=recipe.model.layerwise_lr_decay,
        task_names=model.task_names,
        problem_types=problem_types,
        train_task_sizes=[(model.task_index(t.name), len(t.train)) for t in trained],
        task_sampling=recipe.multitask.task_sampling,
        sampling_temperature=recipe.multitask.sampling_temperature,
    )
    trainable, total = count_parameters(model)
    if trainer.is_world_process_zero():
        logger.info(f"hf-transfer: multi-task ({model.config.sharing} sharing, {recipe.multitask.task_sampling} "
                    f"sampling), {len(trained)} of {len(model.task_names)} tasks training: "
                    + ", ".join(f"{t.name} ({len(t.train):,} rows)" for t in trained)
                    + f"; {trainable:,} of {total:,} parameters trainable"
                    + (f"; method {'+'.join(methods)}" if methods else ""))

    start = time.time()
    train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics.update({
        "train_runtime": train_output.metrics.get("train_runtime", time.time() - start),
        "train_loss": train_output.training_loss,
        "train_steps": trainer.state.global_step,
        "trainable_parameters": trainable,
        "sharing": model.config.sharing,
    })
    for name, rows in trainer.total_rows_per_task().items():
        if rows:
            metrics[f"{name}/train_rows"] = rows
    accuracies = []
    for task in tasks:
        result = trainer.evaluate_task(task.name, task.eval)
        keys = ("mse", "pearson", "loss") if task.spec.problem_type == "regression" else (
            "accuracy", "macro_f1", "loss")
        for key in keys:
            metrics[f"{task.name}/{key}"] = result[f"{task.name}_{key}"]
        if task.spec.problem_type != "regression":
            accuracies.append(result[f"{task.name}_accuracy"])
    if accuracies:
        metrics["mean_accuracy"] = float(np.mean(accuracies))
    output_dir = Path(args.output_dir)
    export_multitask(trainer, recipe, tasks, metrics, output_dir, recipe_yaml=recipe_yaml, push=push_requested)
    return TrainResult(metrics, trainer.accelerator.unwrap_model(trainer.model), tokenizer, trainer, recipe,
                       output_dir)


def export_multitask(
    trainer: MultiTaskTrainer,
    recipe: MultiTaskRecipe,
    tasks: list[TaskData],
    metrics: dict[str, Any],
    output_dir: Path,
    *,
    recipe_yaml: str,
    push: PushRequest | None = None,
) -> None:
    """Write the whole model and, under ``tasks/<name>``, each task as a plain model; push if asked. Main process
    only (the others wait); files are staged and moved in with ``config.json`` last."""
    args = recipe.training
    accelerator = trainer.accelerator
    if trainer.is_world_process_zero():
        model: MultiTaskModel = accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        base = model.config.base_model_name_or_path or recipe.model.model_name_or_path
        specs = {t.name: t.spec for t in tasks}
        stage = staging_dir(output_dir)
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        for name in model.task_names:
            folder = stage / TASKS_FOLDER / name
            model.export_task(name).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            own = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{name}/")}
            atomic_write_json(folder / "metrics.json", own)
            atomic_write_text(folder / "README.md", task_card(model, name, specs.get(name), own, recipe_yaml,
                                                              base=base, hub_model_id=args.hub_model_id))
        save_trainer_results(trainer, metrics, stage)
        finish_export(stage, output_dir, recipe_yaml=recipe_yaml, metrics=metrics,
                      card=multitask_card(model, metrics, recipe_yaml, specs, hub_model_id=args.hub_model_id),
                      push=push)
    accelerator.wait_for_everyone()


def task_evaluation(name: str, spec: Any, metrics: dict[str, Any]) -> EvalSet:
    """The ``model-index`` result of one task: its evaluation rows (``eval_data``, or the held-out share of
    ``data``) with the task's own metrics (names without the ``<task>/`` prefix)."""
    if spec is None:  # a task of from_multitask_model that this run did not list: its data is not known here
        return EvalSet(name, None, metrics)
    if spec.eval_data:
        return EvalSet(name, spec.eval_data, metrics, split=spec.eval_split, config=spec.eval_config,
                       note="eval_data")
    return EvalSet(name, spec.data, metrics, split=spec.split, config=spec.config,
                   note=f"{spec.eval_fraction:.0%} of the rows, held out")


def task_card(model: MultiTaskModel, name: str, spec: Any, metrics: dict[str, Any], recipe_yaml: str, *,
              base: str, hub_model_id: str | None = None) -> str:
    """The card of one task exported alone (``tasks/<name>/``): a plain single-task classifier (or regressor)."""
    regression = model.task_config(name)["problem_type"] == "regression"
    return transfer_card(
        base_model=base, methods=[f"multitask-{model.config.sharing}"], metrics=metrics, recipe_yaml=recipe_yaml,
        evaluations=[task_evaluation(name, spec, metrics)],
        data=[("training", spec.data if spec else None),
              ("evaluation", (spec.eval_data or spec.data) if spec else None)],
        peft_type=None, hub_model_id=hub_model_id, subfolder=f"{TASKS_FOLDER}/{name}", regression=regression,
        title=None if hub_model_id else f"{(hub_base_model(base) or display_path(base)).split('/')[-1]} multi-task "
        f"model: task {name}", extra_tags=["multi-task"], data_note=None,
    )


def multitask_card(model: MultiTaskModel, metrics: dict[str, Any], recipe_yaml: str, specs: dict[str, Any], *,
                   hub_model_id: str | None = None) -> str:
    """The model card of the whole multi-task model: tasks, metrics, how to load it whole or one task at a time."""
    from ..defaults import __version__

    config = model.config
    base = config.base_model_name_or_path or "unknown"
    where_ = where(hub_model_id)
    rows = []
    for task in config.tasks:
        name = task["name"]
        spec = specs.get(name)
        score = metrics.get(f"{name}/accuracy", metrics.get(f"{name}/mse"))
        score = f"{score:.4f}" if isinstance(score, float) else "—"
        labels = ", ".join(task["id2label"][i] for i in range(len(task["id2label"])))
        rows.append(f"| {name} | {task['problem_type']} | {labels} | {display_path(spec.data) if spec else '—'} "
                    f"| {score} |")
    first = config.tasks[0]["name"]
    tasks_table = ("| task | type | labels | training data | accuracy (MSE for regression) |\n"
                   "|---|---|---|---|---|\n" + "\n".join(rows))
    usage = f"""## Use one task (no hf-transfer needed)

Each task is also a plain `AutoModelForSequenceClassification` in `tasks/<name>/`:

```python
from transformers import pipeline
classifier = pipeline("text-classification", model="path/to/this/folder/tasks/{first}")
# from the Hub: AutoModelForSequenceClassification.from_pretrained({where_}, subfolder="tasks/{first}")
```

## Use the whole model

```python
import hf_transfer.multitask  # registers the multi-task model with AutoConfig / AutoModel
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained({where_})
tokenizer = AutoTokenizer.from_pretrained({where_})
logits = model(**tokenizer(["a review"], return_tensors="pt"), task="{first}").logits
```"""
    content = CardContent(
        base_model=base,
        title=hub_model_id or f"{(hub_base_model(base) or display_path(base)).split('/')[-1]} multi-task model",
        intro=(f"One {hub_link(base)} encoder shared by {len(config.tasks)} tasks (**{config.sharing}** sharing), one "
               f"head per task, trained with [hf-transfer]({PROJECT_URL}) {__version__}.\n\n{tasks_table}"),
        usage=usage,
        pipeline_tag="text-classification",
        library_name="transformers",
        tags=["hf-transfer", "multi-task", f"multitask-{config.sharing}"],
        data=[(f"{name} (training)", spec.data) for name, spec in specs.items()],
        evaluations=[task_evaluation(t["name"], specs.get(t["name"]), role_metrics(metrics, f"{t['name']}/"))
                     for t in config.tasks],
        metrics=metrics,
        recipe_yaml=recipe_yaml,
        hub_model_id=hub_model_id,
    )
    return build_card(content)
