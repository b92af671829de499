"""``train()`` and ``evaluate()``: a recipe in, a Hub-ready model folder out.

The same functions serve the CLI (``hf-transfer train``), ``accelerate launch -m hf_transfer train`` and notebooks
(``hf_transfer.train("recipe.yaml", max_steps=50)``).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import frozen_prefix
from .backbones import (
    count_parameters,
    find_feature_module,
    load_classifier,  # noqa: F401  (kept importable from here; the task loads the model)
    load_tokenizer,  # noqa: F401  (kept importable from here; the task loads the processor)
    set_trainable_top_layers,
    wrap_with_peft,
)
from .cards import recipe_card
from .data import (
    StreamingTrainSet,
    load_raw_data,
    pair_with_target,
    prepare_data,
    progress_bars,
)
from .diagnostics.training_plot import finish_before_after_plot, start_before_after_plot
from .distributed import full_state_dict, parameters_sharded
from .errors import DataError, RecipeError, UserError
from .families import DEFAULT_FAMILY, FamilySpec, TrainResult, family_of, get_family, register_family
from .hub import (
    PushRequest,
    discard_stage,
    finish_export,
    save_trainer_results,
    staging_dir,
)
from .methods import get_method_spec
from .metrics import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, with_intervals
from .outputs import check_output_location
from .preamble import begin_run
from .recipe import Recipe, load_recipe
from .selection import build_selection, selection_summary
from .tasks import load_trained  # noqa: F401  (loading lives with the tasks; the names stay importable from here)
from .tasks.loading import CLASSIFIER_CONFIG, _load_adapter, save_classifier_config  # noqa: F401  (as above)
from .trainer import METHODS_SUBMODULE, GradualUnfreezing, TransferTrainer

logger = logging.getLogger(__name__)


def build_methods(recipe: Recipe, model: torch.nn.Module, num_labels: int):
    """Instantiate the recipe's methods. Returns ``({name: method}, feature_module or None)``."""
    classes = {name: get_method_spec(name).method_class for name in recipe.methods.method}
    classes = {name: cls for name, cls in classes.items() if cls is not None}
    if not classes:
        return {}, None
    _, module = find_feature_module(model, num_labels, recipe.model.feature_module)
    feature_dim = getattr(module, "in_features", None)
    if feature_dim is None:
        raise UserError(f"feature_module: {type(module).__name__} has no in_features; name a linear layer")
    methods = {
        name: cls(recipe.method_configs[name], feature_dim=feature_dim, num_labels=num_labels)
        for name, cls in classes.items()
    }
    return methods, module


def train(
    recipe: str | os.PathLike | dict | Recipe | None = None,
    *,
    callbacks: list | None = None,
    **overrides: Any,
) -> TrainResult:
    """Run a recipe end to end: validate data, load the model, train, evaluate, export (and push if asked).

    Args:
        recipe: a YAML path, a mapping of recipe fields, a parsed :class:`Recipe`, or ``None`` for the embedded
            defaults (the packaged MiniLM, Amazon books -> kitchen reviews).
        callbacks: extra ``transformers.TrainerCallback`` objects (not part of the recipe).
        **overrides: recipe fields that win over the recipe (``max_steps=50``, ``method=["dann"]``,
            ``**{"peft.r": 16}``).

    Returns:
        :class:`TrainResult` with ``metrics`` (``source_accuracy``, ``target_accuracy``, ``train_runtime`` ...).

    Raises:
        hf_transfer.errors.UserError: bad recipe or data, before anything is trained or written.
    """
    if recipe is None or not hasattr(recipe, "training"):  # a path, a mapping, or None: parse it
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise UserError("overrides: pass them with a recipe path or mapping, not with a parsed Recipe")
    from .preflight import check_before_training

    check_before_training(recipe)  # machine and model-config checks, before anything is read, written or loaded
    check_output_location(recipe)  # output_dir usable and not another run's, push possible; takes the folder's lock
    # The family (docs/families.md) runs the rest: the flat path below, or multi-task, meta-learning, lifelong.
    return get_family(family_of(recipe)).train(recipe, callbacks=callbacks)


def train_transfer(recipe: Recipe, *, callbacks: list | None = None) -> TrainResult:
    """The ``transfer`` family's run (flat recipes: one source, an optional unlabelled target, the transfer methods),
    from a parsed and checked recipe: load and check the data, load the model, train, evaluate, export."""
    start = begin_run(recipe)  # snapshot, push request, resume, seed (hf_transfer/preamble.py)
    recipe_yaml, push_requested, args = start.recipe_yaml, start.push, recipe.training
    if recipe.model.gradual_unfreezing_steps:
        args.ddp_find_unused_parameters = True  # layers join training mid-run
    streaming = recipe.data.streaming
    if streaming:
        # Under several processes Accelerate would otherwise have the main process read each step's batches and
        # concatenate them for dispatch, which fails for dynamically padded batches of different lengths. Instead
        # every process reads the same seeded stream and keeps its own slice of each batch (IterableDatasetShard):
        # no row is duplicated or dropped.
        args.accelerator_config.dispatch_batches = False
        if args.train_sampling_strategy == "group_by_length" and args.process_index == 0:
            logger.info("hf-transfer: train_sampling_strategy group_by_length does not apply with streaming: true (no "
                        "lengths are known before the rows are read); rows come in shuffled stream order, each batch "
                        "padded to its own longest row")

    task = recipe.data.resolved_task  # what the model learns (hf_transfer/tasks): data, model, metrics, export
    with progress_bars(not args.disable_tqdm):
        raw = load_raw_data(recipe.data, num_labels=recipe.model.num_labels, seed=args.seed, task=task)
    # Loaded now: a bad metric fails before the model.
    compute_metrics = task.compute_metrics(recipe.data.metrics)
    tokenizer = task.load_processor(recipe.model, recipe.data)  # a tokenizer, an image processor ...
    if recipe.needs_target and raw.target is None:
        raise DataError("target_data: the chosen method learns from unlabelled target data; set target_data")
    with args.main_process_first(desc="tokenizing"), progress_bars(not args.disable_tqdm):
        data = prepare_data(raw, tokenizer, recipe.data, seed=args.seed, task=task)

    model = task.build_model(recipe.model, recipe.data, data.labels)
    if hasattr(compute_metrics, "id2label"):
        compute_metrics.id2label = dict(data.labels.id2label)  # entity metrics read a token classifier's tags by name
    task.prepare_model(model)
    if recipe.model.freeze_backbone:
        set_trainable_top_layers(model, 0)
    elif recipe.model.trainable_layers is not None:
        set_trainable_top_layers(model, recipe.model.trainable_layers)
    if recipe.peft:
        model = wrap_with_peft(model, recipe.peft)
    methods, feature_module = build_methods(recipe, model, data.labels.num_labels)
    collator = task.collator(tokenizer)
    metrics: dict[str, Any] = {}
    # `methods`: the built loss modules, so a hook can hand them what only it knows (e.g. class names -> a graph);
    # `feature_module`: whose input is StepBatch.features. A hook may replace `collator` (mlm adds masked rows) and
    # append TrainerCallbacks to `callbacks` (adabn re-estimates batch-norm statistics at on_train_end).
    callbacks = list(callbacks or [])
    context = {"data": data, "model": model, "tokenizer": tokenizer, "collator": collator, "args": args,
               "metrics": metrics, "methods": methods, "feature_module": feature_module, "callbacks": callbacks}
    for name in recipe.methods.method:
        prepare = get_method_spec(name).prepare
        if prepare is not None:
            context = prepare(recipe.method_configs[name], context)
    collator_replaced = context["collator"] is not collator
    collator = context["collator"]
    # Source vs target t-SNE before and after training, on a bounded sample (main process; docs/diagnostics.md).
    tsne = None
    if task.supports_feature_plot:
        tsne = start_before_after_plot(args, model, data, collator, enabled=recipe.methods.tsne_plot,
                                       rows=recipe.methods.tsne_rows)
    # cache_frozen (hf_transfer/frozen_prefix.py): the frozen bottom runs once per row, not once per row and epoch.
    prefix_cache = frozen_prefix.setup(
        recipe, model, task, tokenizer, collator_replaced=collator_replaced,
        tables=[data.train, data.target if recipe.needs_target else None, data.source_eval, data.target_eval],
    )
    if streaming:  # endless, seeded, lazily paired rows (docs/streaming.md)
        d = recipe.data
        data.train = StreamingTrainSet(data.train, data.target if recipe.needs_target else None,
                                       source_spec=d.source_data, target_spec=d.target_data or "")
    elif recipe.needs_target:
        data.train = pair_with_target(data.train, data.target, seed=args.seed)
    data.train = task.augment(data.train, recipe.data, seed=args.seed)  # e.g. image_augmentation
    selection = build_selection(recipe, model, data, feature_module=feature_module)

    if recipe.model.gradual_unfreezing_steps:
        callbacks.append(GradualUnfreezing(model, recipe.model.gradual_unfreezing_steps))
    eval_sets = {k: v for k, v in (("source", data.source_eval), ("target", data.target_eval)) if v is not None}
    trainable, total = count_parameters(model)  # the model's own: a method's discriminator is not part of it
    trainer = task.trainer_class(TransferTrainer)(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=eval_sets or None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        methods=methods,
        feature_module=feature_module,
        layerwise_lr_decay=recipe.model.layerwise_lr_decay,
        extra_eval_metrics=selection,
        task=task,
    )
    if trainer.is_world_process_zero():
        rows = "streamed training rows" if streaming else f"{len(data.train):,} training rows"
        logger.info(f"hf-transfer: {recipe.model.model_name_or_path}, method {'+'.join(recipe.methods.method)}, "
                    f"{trainable:,} of {total:,} parameters trainable, {rows}")

    start = time.time()
    if prefix_cache is not None:
        prefix_cache.attach()
    try:
        train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        metrics.update({
            "train_runtime": train_output.metrics.get("train_runtime", time.time() - start),
            "train_loss": train_output.training_loss,
            "train_steps": trainer.state.global_step,
            "trainable_parameters": trainable,
        })
        for name, dataset in eval_sets.items():
            result = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=name)
            metrics.update(evaluation_metrics(result, name))
    finally:
        if prefix_cache is not None:  # the model is exported and returned with its ordinary forward
            prefix_cache.detach()
            prefix_cache.close()
    if selection is not None:  # which evaluation each label-free validator picks (and its target accuracy)
        metrics.update(selection_summary(trainer.state.log_history, selection.validators))
    output_dir = Path(args.output_dir)
    # The optional picture is drawn once the model is safely published (a failure there warns and loses nothing), and
    # before the push, so that the Hub repository has it too.
    export(trainer, recipe, metrics, output_dir, recipe_yaml=recipe_yaml, push=push_requested,
           after_publish=lambda: finish_before_after_plot(tsne, trainer, output_dir))
    return TrainResult(metrics, trainer.model, tokenizer, trainer, recipe, output_dir)


register_family(FamilySpec(
    DEFAULT_FAMILY, selected_by=None, load_recipe=None, train=train_transfer,
    summary="One labelled source, an optional unlabelled target, the transfer methods (`method:`)",
))


# What Trainer.evaluate adds beside the metrics and the loss: speed figures, not results.
_SPEED_KEYS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def evaluation_metrics(result: dict[str, float], prefix: str) -> dict[str, float]:
    """The recipe's metrics and the loss from ``Trainer.evaluate(..., metric_key_prefix=prefix)``
    (``target_accuracy``, ``target_macro_f1``, ``target_loss`` ...), without its speed figures."""
    return {k: v for k, v in result.items()
            if k.startswith(f"{prefix}_") and k[len(prefix) + 1:] not in _SPEED_KEYS}


def export(
    trainer: TransferTrainer,
    recipe: Recipe,
    metrics: dict[str, Any],
    output_dir: Path,
    *,
    recipe_yaml: str,
    push: PushRequest | None = None,
    after_publish: Callable[[], Any] | None = None,
) -> None:
    """Write the model (or adapter, and optionally the merged model), tokenizer, metrics, recipe and card; push if
    the recipe asks. Every process joins the gathering of a sharded model; the main process writes, the others wait.
    ``after_publish`` (main process) runs once the folder is in place and before the push: optional extras."""
    args = recipe.training
    accelerator = trainer.accelerator
    peft_type = recipe.peft["peft_type"] if recipe.peft else None
    if peft_type and recipe.model.merge_adapter and parameters_sharded(trainer):
        # Refused before training (launch_check); checked again on every process, so none waits for the others.
        raise UserError("model.merge_adapter: not available when the engine shards the parameters")
    state_dict = full_state_dict(trainer)
    if trainer.methods_in_model:  # the discriminator rode along in the engine's module; it is never exported
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(f"{METHODS_SUBMODULE}.")}
    if trainer.is_world_process_zero():
        model = accelerator.unwrap_model(trainer.model)
        stage = staging_dir(output_dir)
        try:
            if peft_type:
                # No Hub lookup of the base config at save time (PEFT checks for a resized vocabulary; never here).
                model.save_pretrained(stage, state_dict=state_dict, save_embedding_layers=False)
                save_classifier_config(model, stage)
            else:
                model.save_pretrained(stage, state_dict=state_dict)
            trainer.processing_class.save_pretrained(stage)
            if peft_type and recipe.model.merge_adapter:
                merged = copy.deepcopy(model).merge_and_unload()
                merged.save_pretrained(stage / "merged")
                trainer.processing_class.save_pretrained(stage / "merged")
            save_trainer_results(trainer, metrics, stage)
            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            card = recipe_card(recipe, metrics, recipe_yaml, hub_model_id=args.hub_model_id,
                               id2label=inner.config.id2label)
        except BaseException:
            discard_stage(stage)  # no .staging-* folder outlives a failed export
            raise
        finish_export(stage, output_dir, recipe_yaml=recipe_yaml, metrics=metrics, card=card, push=push,
                      after_publish=after_publish)
    accelerator.wait_for_everyone()


def _evaluation_device(device: str | torch.device | None) -> torch.device:
    """``device`` checked before anything loads; ``None``: the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise RecipeError(f"device: unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device: {str(device)!r} asked for, but torch sees no CUDA GPU here; use cpu")
    return device


@torch.no_grad()
def evaluate(
    model_dir: str | os.PathLike,
    data: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    split: str = "train",
    batch_size: int = 32,
    max_length: int | None = None,
    image_column: str | None = None,
    config: str | None = None,
    text_pair_column: str | None = None,
    metrics: list[str] | None = None,
    bootstrap_resamples: int = DEFAULT_RESAMPLES,
    confidence_level: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    disable_tqdm: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """The recipe's metrics of a trained model folder on a labelled dataset (file, folder or Hub id), each with a
    percentile bootstrap interval: ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high``, ``macro_f1`` ...,
    ``num_examples``, and the settings used (``max_length``, ``bootstrap_resamples``, ``confidence_level``).

    Columns, ``max_length`` and ``metrics`` default to the ``recipe.yaml`` saved beside the model, then to
    ``text`` / ``label`` / 256 (capped at the model's positions) / accuracy and macro F1. For an image classifier
    set ``image_column`` (and ``config``, e.g. the key prefix of a ``.npz``). Runs on the GPU when there is one
    (``device`` overrides). ``bootstrap_resamples=0`` leaves the intervals out.

    Raises:
        hf_transfer.errors.UserError: a bad option, a damaged model folder or data that does not fit, before the
            model's weights load where the problem can be seen without them.
    """
    from tqdm.auto import tqdm

    from .data import require_column
    from .evaluation import read_model_folder, resolve_settings
    from .tasks import get_task

    if batch_size < 1:
        raise RecipeError(f"batch_size: must be >= 1, got {batch_size}")
    if bootstrap_resamples < 0:
        raise RecipeError(f"bootstrap_resamples: must be >= 0 (0: no intervals), got {bootstrap_resamples}")
    if not 0 < confidence_level < 1:
        raise RecipeError(f"confidence_level: must be in (0, 1), e.g. 0.95, got {confidence_level}")
    device = _evaluation_device(device)
    files = read_model_folder(model_dir)
    s = resolve_settings(model_dir, files, text_column=text_column, text_pair_column=text_pair_column,
                         label_column=label_column, image_column=image_column, max_length=max_length, metrics=metrics)
    task = get_task(s.task)  # the folder's task (its recipe.yaml), or image classification for --image_column
    suite = task.compute_metrics(s.metrics)
    table = task.read_evaluation_table(data, s, split=split, config=config)  # a task's own format (CoNLL) too
    for column, option in [*task.evaluation_columns(s), (s.label_column, "label_column")]:
        require_column(table, column, field="data", spec=data, option=option)

    model, processor = load_trained(model_dir)
    model.to(device)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    if hasattr(suite, "id2label"):
        suite.id2label = id2label  # entity metrics read a token classifier's tags by name
    batch_inputs, labels = task.evaluation_data(table, processor, s, id2label, spec=data)

    logits = []
    # disable=None: a bar on a terminal, none when stderr is a file or a pipe
    with tqdm(total=len(labels), desc="evaluating", unit="row", disable=True if disable_tqdm else None) as bar:
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            batch = {k: v.to(device) for k, v in batch_inputs(start, stop).items() if isinstance(v, torch.Tensor)}
            logits.append(model(**batch).logits.float().cpu())
            bar.update(stop - start)
    predictions = torch.cat(logits).numpy()
    values = suite.compute(predictions, labels)
    intervals = suite.intervals(predictions, labels, num_resamples=bootstrap_resamples, confidence=confidence_level,
                                seed=seed) if bootstrap_resamples else {}
    out: dict[str, Any] = {**with_intervals(values, intervals), "num_examples": len(labels)}
    if s.max_length is not None:
        out["max_length"] = s.max_length
    if intervals:
        out.update(bootstrap_resamples=bootstrap_resamples, confidence_level=confidence_level)
    return out
