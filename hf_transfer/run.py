"""``train()`` and ``evaluate()``: a recipe in, a Hub-ready model folder out.

The same functions serve the CLI (``hf-transfer train``), ``accelerate launch -m hf_transfer train`` and notebooks
(``hf_transfer.train("recipe.yaml", max_steps=50)``).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from .checkpoints import resolve_resume_checkpoint
from .data import (
    StreamingTrainSet,
    TransferCollator,
    accuracy_metrics,
    load_raw_data,
    pair_with_target,
    prepare_data,
)
from .diagnostics.training_plot import finish_before_after_plot, start_before_after_plot
from .distributed import full_state_dict, parameters_sharded
from .errors import DataError, UserError
from .hub import PushRequest, finish_export, model_card, staging_dir, take_push_request
from .methods import get_method_spec
from .multitask.recipe import MultiTaskRecipe
from .recipe import Recipe, load_recipe
from .selection import build_selection, selection_summary
from .trainer import METHODS_SUBMODULE, GradualUnfreezing, TransferTrainer


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
            print("hf-transfer: train_sampling_strategy group_by_length does not apply with streaming: true (no "
                  "lengths are known before the rows are read); rows come in shuffled stream order, each batch "
                  "padded to its own longest row")
    set_seed(args.seed)

    raw = load_raw_data(recipe.data, num_labels=recipe.model.num_labels, seed=args.seed)
    image = bool(recipe.data.image_column)  # image classification (docs/vision.md): same flow, other processor
    hub_kwargs = dict(revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code)
    if image:
        tokenizer = load_image_processor(recipe.model.model_name_or_path, image_size=recipe.data.image_size,
                                         **hub_kwargs)
    else:
        tokenizer = load_tokenizer(recipe.model.model_name_or_path, **hub_kwargs)
    if recipe.needs_target and raw.target is None:
        raise DataError("target_data: the chosen method learns from unlabelled target data; set target_data")
    with args.main_process_first(desc="tokenizing"):
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
    # `methods`: the built loss modules, so a hook can hand them what only it knows (e.g. class names -> a graph).
    context = {"data": data, "model": model, "tokenizer": tokenizer, "collator": collator, "args": args,
               "metrics": metrics, "methods": methods}
    for name in recipe.methods.method:
        prepare = get_method_spec(name).prepare
        if prepare is not None:
            context = prepare(recipe.method_configs[name], context)
    # Source vs target t-SNE before and after training, on a bounded sample (main process; docs/diagnostics.md).
    tsne = None if image else start_before_after_plot(args, model, data, collator)
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
        compute_metrics=accuracy_metrics,
        callbacks=callbacks,
        methods=methods,
        feature_module=feature_module,
        layerwise_lr_decay=recipe.model.layerwise_lr_decay,
        extra_eval_metrics=selection,
    )
    if trainer.is_world_process_zero():
        rows = "streamed training rows" if streaming else f"{len(data.train):,} training rows"
        print(f"hf-transfer: {recipe.model.model_name_or_path}, method {'+'.join(recipe.methods.method)}, "
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
        metrics[f"{name}_accuracy"] = result[f"{name}_accuracy"]
        metrics[f"{name}_macro_f1"] = result[f"{name}_macro_f1"]
        metrics[f"{name}_loss"] = result[f"{name}_loss"]
    if selection is not None:  # which evaluation each label-free validator picks (and its target accuracy)
        metrics.update(selection_summary(trainer.state.log_history, selection.validators))
    output_dir = Path(args.output_dir)
    finish_before_after_plot(tsne, trainer, output_dir)  # before export, so a push includes the picture
    export(trainer, recipe, metrics, output_dir, recipe_yaml=recipe_yaml, push=push_requested)
    return TrainResult(metrics, trainer.model, tokenizer, trainer, recipe, output_dir)


def export(
    trainer: TransferTrainer,
    recipe: Recipe,
    metrics: dict[str, Any],
    output_dir: Path,
    *,
    recipe_yaml: str,
    push: PushRequest | None = None,
) -> None:
    """Write the model (or adapter, and optionally the merged model), tokenizer, metrics, recipe and card; push if
    the recipe asks. Every process joins the gathering of a sharded model; the main process writes, the others wait."""
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
        model.save_pretrained(stage, state_dict=state_dict)
        trainer.processing_class.save_pretrained(stage)
        if peft_type and recipe.model.merge_adapter:
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(stage / "merged")
            trainer.processing_class.save_pretrained(stage / "merged")
        d = recipe.data
        card = model_card(
            base_model=recipe.model.model_name_or_path,
            methods=recipe.methods.method,
            metrics=metrics,
            recipe_yaml=recipe_yaml,
            datasets={"source (labelled)": d.source_data, "target (unlabelled)": d.target_data,
                      "evaluation": d.eval_data or (d.target_data if "target_accuracy" in metrics else None)},
            peft_type=peft_type,
            hub_model_id=args.hub_model_id,
            pipeline_tag="image-classification" if recipe.data.image_column else "text-classification",
        )
        finish_export(stage, output_dir, recipe_yaml=recipe_yaml, metrics=metrics, card=card, push=push)
    accelerator.wait_for_everyone()


def load_trained(model_dir: str | os.PathLike):
    """Load a folder written by :func:`train`: a plain model, or a PEFT adapter on its base model. Returns
    ``(model, tokenizer)``, the image processor in place of the tokenizer for an image classifier."""
    path = Path(model_dir)
    if (path / "preprocessor_config.json").is_file() and (path / "config.json").is_file():
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(str(path)).eval(), load_image_processor(str(path))
    if (path / "preprocessor_config.json").is_file():
        raise UserError(
            f"model: {str(path)!r} is an image-classification adapter; evaluate its merged/ folder (train with "
            "merge_adapter: true) or load it with peft.PeftModel on the base model"
        )
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(str(path))
    elif (path / "config.json").is_file():
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(path))
    else:
        raise UserError(
            f"model: {str(path)!r} has neither config.json nor adapter_config.json; is it a trained model?"
        )
    tokenizer = load_tokenizer(str(path))
    return model.eval(), tokenizer


@torch.no_grad()
def evaluate(
    model_dir: str | os.PathLike,
    data: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split: str = "train",
    batch_size: int = 32,
    max_length: int = 256,
    image_column: str | None = None,
    config: str | None = None,
) -> dict[str, float]:
    """Accuracy and macro-F1 of a trained model folder on a labelled dataset (file, folder or Hub id). For an image
    classifier set ``image_column`` (and ``config``, e.g. the key prefix of a ``.npz``)."""
    from transformers import EvalPrediction

    from .data import LabelSpace, encode_labels, load_table, require_column

    model, tokenizer = load_trained(model_dir)
    table = load_table(data, field="data", split=split, config=config)
    input_column = image_column or text_column
    require_column(table, input_column, field="data", spec=data, option="image_column" if image_column else
                   "text_column")
    require_column(table, label_column, field="data", spec=data, option="label_column")
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    names = [id2label[i] for i in range(len(id2label))]
    values = table[label_column]
    space = LabelSpace(names, from_strings=any(isinstance(v, str) for v in values))
    table = encode_labels(table, label_column, space, field="data", spec=data)
    labels = table["labels"]
    logits = []
    if image_column:
        from .vision.data import ImageCollator, select_image_column

        images, collate = select_image_column(table, image_column, keep=()), ImageCollator(tokenizer)
        for start in range(0, len(images), batch_size):
            rows = [images[i] for i in range(start, min(start + batch_size, len(images)))]
            logits.append(model(**collate(rows)).logits.float())
        texts = images
    else:
        texts = table[text_column]
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            logits.append(model(**enc).logits.float())
    metrics = accuracy_metrics(EvalPrediction(predictions=torch.cat(logits).numpy(), label_ids=labels))
    return {**metrics, "num_examples": len(texts)}
