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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, set_seed

from .backbones import (
    count_parameters,
    find_feature_module,
    freeze_batchnorm_statistics,
    load_classifier,
    load_image_processor,
    load_tokenizer,
    set_trainable_top_layers,
    wrap_with_peft,
)
from .cards import recipe_card
from .checkpoints import resolve_resume_checkpoint
from .data import (
    StreamingTrainSet,
    TransferCollator,
    load_raw_data,
    pair_with_target,
    prepare_data,
    progress_bars,
)
from .diagnostics.training_plot import finish_before_after_plot, start_before_after_plot
from .distributed import full_state_dict, parameters_sharded
from .errors import DataError, RecipeError, UserError
from .hub import (
    PushRequest,
    atomic_write_text,
    discard_stage,
    finish_export,
    save_trainer_results,
    staging_dir,
    take_push_request,
)
from .methods import get_method_spec
from .metrics import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, build_compute_metrics, with_intervals
from .multitask.recipe import MultiTaskRecipe
from .outputs import check_output_location
from .recipe import Recipe, load_recipe
from .selection import build_selection, selection_summary
from .trainer import METHODS_SUBMODULE, GradualUnfreezing, TransferTrainer

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: the metrics written to ``metrics.json``, the trained model, and the rest."""

    metrics: dict[str, Any]
    model: PreTrainedModel
    tokenizer: Any
    trainer: TransferTrainer
    recipe: Recipe
    output_dir: Path
    extras: dict[str, Any] = field(default_factory=dict)


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
    from .meta.recipe import TaskListRecipe

    if not isinstance(recipe, (Recipe, MultiTaskRecipe, TaskListRecipe)):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise UserError("overrides: pass them with a recipe path or mapping, not with a parsed Recipe")
    from .preflight import check_before_training

    check_before_training(recipe)  # machine and model-config checks, before anything is read, written or loaded
    check_output_location(recipe)  # output_dir usable and not another run's, push possible; takes the folder's lock
    if isinstance(recipe, MultiTaskRecipe):  # a recipe with a `tasks:` list (docs/multitask.md)
        from .multitask.run import train_multitask

        return train_multitask(recipe, callbacks=callbacks)
    if isinstance(recipe, TaskListRecipe):  # meta-learning or lifelong recipes (docs/meta_lifelong.md)
        from .lifelong import LifelongRecipe, train_lifelong
        from .meta import train_meta

        return (train_lifelong if isinstance(recipe, LifelongRecipe) else train_meta)(recipe)
    recipe_yaml = recipe.to_yaml()  # as the user asked for it, before the adjustments below
    args = recipe.training
    push_requested = take_push_request(args)
    # `latest` -> the newest complete checkpoint; a half-written one is refused before anything loads.
    args.resume_from_checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    # Our datasets hold exactly the columns the collator needs (target_* included); don't let the Trainer drop them.
    args.remove_unused_columns = False
    if not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # pinning needs an accelerator; on the CPU it only warns
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
    set_seed(args.seed)

    with progress_bars(not args.disable_tqdm):
        raw = load_raw_data(recipe.data, num_labels=recipe.model.num_labels, seed=args.seed)
    compute_metrics = build_compute_metrics(recipe.data.metrics)  # loaded now: a bad metric fails before the model
    image = bool(recipe.data.image_column)  # image classification (docs/vision.md): same flow, other processor
    hub_kwargs = dict(revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code)
    if image:
        tokenizer = load_image_processor(recipe.model.model_name_or_path, image_size=recipe.data.image_size,
                                         **hub_kwargs)
    else:
        tokenizer = load_tokenizer(recipe.model.model_name_or_path, **hub_kwargs)
    if recipe.needs_target and raw.target is None:
        raise DataError("target_data: the chosen method learns from unlabelled target data; set target_data")
    with args.main_process_first(desc="tokenizing"), progress_bars(not args.disable_tqdm):
        data = prepare_data(raw, tokenizer, recipe.data, seed=args.seed)

    config_overrides = {}
    if recipe.data.image_size is not None:
        config_overrides["image_size"] = recipe.data.image_size
    if recipe.model.classifier_hidden_size is not None:
        config_overrides["classifier_hidden_size"] = recipe.model.classifier_hidden_size
    model = load_classifier(
        recipe.model.model_name_or_path,
        num_labels=data.labels.num_labels,
        id2label=data.labels.id2label,
        image=image,
        config_overrides=config_overrides,
        **hub_kwargs,
    )
    if image:
        freeze_batchnorm_statistics(model)
    if recipe.model.freeze_backbone:
        set_trainable_top_layers(model, 0)
    elif recipe.model.trainable_layers is not None:
        set_trainable_top_layers(model, recipe.model.trainable_layers)
    if recipe.peft:
        model = wrap_with_peft(model, recipe.peft)
    methods, feature_module = build_methods(recipe, model, data.labels.num_labels)
    if image:
        from .vision.data import ImageCollator

        collator = ImageCollator(tokenizer)
    else:
        collator = TransferCollator(tokenizer)
    metrics: dict[str, Any] = {}
    # `methods`: the built loss modules, so a hook can hand them what only it knows (e.g. class names -> a graph);
    # `feature_module`: whose input is StepBatch.features. A hook may replace `collator` (mlm adds masked rows).
    context = {"data": data, "model": model, "tokenizer": tokenizer, "collator": collator, "args": args,
               "metrics": metrics, "methods": methods, "feature_module": feature_module}
    for name in recipe.methods.method:
        prepare = get_method_spec(name).prepare
        if prepare is not None:
            context = prepare(recipe.method_configs[name], context)
    collator = context["collator"]
    # Source vs target t-SNE before and after training, on a bounded sample (main process; docs/diagnostics.md).
    tsne = None if image else start_before_after_plot(args, model, data, collator, enabled=recipe.methods.tsne_plot,
                                                      rows=recipe.methods.tsne_rows)
    if streaming:  # endless, seeded, lazily paired rows (docs/streaming.md)
        d = recipe.data
        data.train = StreamingTrainSet(data.train, data.target if recipe.needs_target else None,
                                       source_spec=d.source_data, target_spec=d.target_data or "")
    elif recipe.needs_target:
        data.train = pair_with_target(data.train, data.target, seed=args.seed)
    if image and recipe.data.image_augmentation:
        from .vision.data import augment_table

        data.train = augment_table(data.train, recipe.data.image_augmentation, seed=args.seed)
    selection = build_selection(recipe, model, data, feature_module=feature_module)

    callbacks = list(callbacks or [])
    if recipe.model.gradual_unfreezing_steps:
        callbacks.append(GradualUnfreezing(model, recipe.model.gradual_unfreezing_steps))
    eval_sets = {k: v for k, v in (("source", data.source_eval), ("target", data.target_eval)) if v is not None}
    trainable, total = count_parameters(model)  # the model's own: a method's discriminator is not part of it
    trainer = TransferTrainer(
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
    )
    if trainer.is_world_process_zero():
        rows = "streamed training rows" if streaming else f"{len(data.train):,} training rows"
        logger.info(f"hf-transfer: {recipe.model.model_name_or_path}, method {'+'.join(recipe.methods.method)}, "
                    f"{trainable:,} of {total:,} parameters trainable, {rows}")

    start = time.time()
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
    if selection is not None:  # which evaluation each label-free validator picks (and its target accuracy)
        metrics.update(selection_summary(trainer.state.log_history, selection.validators))
    output_dir = Path(args.output_dir)
    # The optional picture is drawn once the model is safely published (a failure there warns and loses nothing), and
    # before the push, so that the Hub repository has it too.
    export(trainer, recipe, metrics, output_dir, recipe_yaml=recipe_yaml, push=push_requested,
           after_publish=lambda: finish_before_after_plot(tsne, trainer, output_dir))
    return TrainResult(metrics, trainer.model, tokenizer, trainer, recipe, output_dir)


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


#: Beside an adapter: the config of the classifier it was trained as (labels, and any size a recipe changed), which
#: the base model's own config lacks. Loaders pass its labels to ``from_pretrained`` (see :func:`load_trained`).
CLASSIFIER_CONFIG = "classifier_config.json"


def save_classifier_config(model, folder: Path) -> None:
    """Write the trained classifier's config (the base config with this run's ``num_labels``, ``id2label``,
    ``label2id``) as :data:`CLASSIFIER_CONFIG`. Not ``config.json``: transformers would then take the adapter folder
    for a full model and look for base weights in it."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    atomic_write_text(folder / CLASSIFIER_CONFIG, inner.config.to_json_string())


def load_trained(model_dir: str | os.PathLike):
    """Load a folder written by :func:`train`: a plain model, or a PEFT adapter (text or image) on its base model.
    Returns ``(model, tokenizer)``, the image processor in place of the tokenizer for an image classifier."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    path = Path(model_dir)
    image = (path / "preprocessor_config.json").is_file()
    auto_class = AutoModelForImageClassification if image else AutoModelForSequenceClassification
    if (path / "adapter_config.json").is_file():
        model = _load_adapter(path, auto_class)
    elif (path / "config.json").is_file():
        model = auto_class.from_pretrained(str(path))
    else:
        raise UserError(
            f"model: {str(path)!r} has neither config.json nor adapter_config.json; is it a trained model?"
        )
    processor = load_image_processor(str(path)) if image else load_tokenizer(str(path))
    return model.eval(), processor


def _load_adapter(path: Path, auto_class):
    """The base model (its packaged copy offline) built as the classifier the adapter was trained on, from
    :data:`CLASSIFIER_CONFIG` (labels, sizes), then the adapter on it. Without that file (older exports) the base
    config is used as it is."""
    import json

    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig

    from .backbones import _load_error, resolve_model_path

    base_id = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    base_path = resolve_model_path(base_id)
    try:
        if (path / CLASSIFIER_CONFIG).is_file():
            values = json.loads((path / CLASSIFIER_CONFIG).read_text(encoding="utf-8"))
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        else:
            config = AutoConfig.from_pretrained(base_path)
        # The new head is not in the base checkpoint (or has the base's class count); the adapter brings it.
        base = auto_class.from_pretrained(base_path, config=config, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as err:
        raise _load_error(base_id, err) from None
    return PeftModel.from_pretrained(base, str(path))


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

    from .data import LabelSpace, encode_labels, load_table, require_column
    from .evaluation import read_model_folder, resolve_settings

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
    suite = build_compute_metrics(s.metrics)
    table = load_table(data, field="data", split=split, config=config)
    inputs = [(s.image_column, "image_column")] if s.image_column else [(s.text_column, "text_column")]
    if s.text_pair_column and not s.image_column:
        inputs.append((s.text_pair_column, "text_pair_column"))
    for column, option in [*inputs, (s.label_column, "label_column")]:
        require_column(table, column, field="data", spec=data, option=option)

    model, processor = load_trained(model_dir)
    model.to(device)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    suite.id2label = id2label  # entity metrics read a token classifier's tags by name
    names = [id2label[i] for i in range(len(id2label))]
    space = LabelSpace(names, from_strings=any(isinstance(v, str) for v in table[s.label_column]))
    table = encode_labels(table, s.label_column, space, field="data", spec=data)
    labels = np.asarray(table["labels"])
    if s.image_column:
        from .vision.data import ImageCollator, select_image_column

        images, collate = select_image_column(table, s.image_column, keep=()), ImageCollator(processor)

        def batch_inputs(start: int, stop: int) -> dict[str, Any]:
            return collate([images[i] for i in range(start, stop)])
    else:
        texts = table[s.text_column]
        pairs = table[s.text_pair_column] if s.text_pair_column else None

        def batch_inputs(start: int, stop: int) -> dict[str, Any]:
            return dict(processor(texts[start:stop], pairs[start:stop] if pairs is not None else None,
                                  truncation=True, max_length=s.max_length, padding=True, return_tensors="pt"))

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
