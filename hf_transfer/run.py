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
    load_classifier,
    load_tokenizer,
    set_trainable_top_layers,
    wrap_with_peft,
)
from .data import TransferCollator, accuracy_metrics, load_raw_data, pair_with_target, prepare_data
from .errors import DataError, UserError
from .hub import atomic_write_json, atomic_write_text, model_card, publish_folder, push_folder, staging_dir
from .methods import get_method_spec
from .multitask.recipe import MultiTaskRecipe
from .recipe import Recipe, load_recipe
from .selection import build_selection, selection_summary
from .trainer import GradualUnfreezing, TransferTrainer


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
    if not isinstance(recipe, (Recipe, MultiTaskRecipe)):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise UserError("overrides: pass them with a recipe path or mapping, not with a parsed Recipe")
    if isinstance(recipe, MultiTaskRecipe):  # a recipe with a `tasks:` list (docs/multitask.md)
        from .multitask.run import train_multitask

        return train_multitask(recipe, callbacks=callbacks)
    recipe_yaml = recipe.to_yaml()  # as the user asked for it, before the adjustments below
    args = recipe.training
    # We push with our own export (model, card, recipe); the Trainer must not push checkpoints on its own.
    push_requested, args.push_to_hub = args.push_to_hub, False
    # Our datasets hold exactly the columns the collator needs (target_* included); don't let the Trainer drop them.
    args.remove_unused_columns = False
    if not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # pinning needs an accelerator; on the CPU it only warns
    if recipe.model.gradual_unfreezing_steps:
        args.ddp_find_unused_parameters = True  # layers join training mid-run
    set_seed(args.seed)

    raw = load_raw_data(recipe.data, num_labels=recipe.model.num_labels, seed=args.seed)
    tokenizer = load_tokenizer(
        recipe.model.model_name_or_path, revision=recipe.model.revision,
        trust_remote_code=recipe.model.trust_remote_code,
    )
    if recipe.needs_target and raw.target is None:
        raise DataError("target_data: the chosen method learns from unlabelled target data; set target_data")
    with args.main_process_first(desc="tokenizing"):
        data = prepare_data(raw, tokenizer, recipe.data, seed=args.seed)

    model = load_classifier(
        recipe.model.model_name_or_path,
        num_labels=data.labels.num_labels,
        id2label=data.labels.id2label,
        revision=recipe.model.revision,
        trust_remote_code=recipe.model.trust_remote_code,
    )
    if recipe.model.freeze_backbone:
        set_trainable_top_layers(model, 0)
    elif recipe.model.trainable_layers is not None:
        set_trainable_top_layers(model, recipe.model.trainable_layers)
    if recipe.peft:
        model = wrap_with_peft(model, recipe.peft)
    methods, feature_module = build_methods(recipe, model, data.labels.num_labels)
    collator = TransferCollator(tokenizer)
    metrics: dict[str, Any] = {}
    context = {"data": data, "model": model, "tokenizer": tokenizer, "collator": collator, "args": args,
               "metrics": metrics}
    for name in recipe.methods.method:
        prepare = get_method_spec(name).prepare
        if prepare is not None:
            context = prepare(recipe.method_configs[name], context)
    if recipe.needs_target:
        data.train = pair_with_target(data.train, data.target, seed=args.seed)
    selection = build_selection(recipe, model, data, feature_module=feature_module)

    callbacks = list(callbacks or [])
    if recipe.model.gradual_unfreezing_steps:
        callbacks.append(GradualUnfreezing(model, recipe.model.gradual_unfreezing_steps))
    eval_sets = {k: v for k, v in (("source", data.source_eval), ("target", data.target_eval)) if v is not None}
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
    trainable, total = count_parameters(model)
    if trainer.is_world_process_zero():
        print(f"hf-transfer: {recipe.model.model_name_or_path}, method {'+'.join(recipe.methods.method)}, "
              f"{trainable:,} of {total:,} parameters trainable, {len(data.train):,} training rows")

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
    export(trainer, recipe, metrics, output_dir, recipe_yaml=recipe_yaml, push=push_requested)
    return TrainResult(metrics, trainer.model, tokenizer, trainer, recipe, output_dir)


def export(
    trainer: TransferTrainer,
    recipe: Recipe,
    metrics: dict[str, Any],
    output_dir: Path,
    *,
    recipe_yaml: str,
    push: bool = False,
) -> None:
    """Write the model (or adapter, and optionally the merged model), tokenizer, metrics, recipe and card; push if
    the recipe asks. Main process only; the others wait."""
    args = recipe.training
    accelerator = trainer.accelerator
    if trainer.is_world_process_zero():
        model = accelerator.unwrap_model(trainer.model)
        stage = staging_dir(output_dir)
        model.save_pretrained(stage)
        trainer.processing_class.save_pretrained(stage)
        peft_type = recipe.peft["peft_type"] if recipe.peft else None
        if peft_type and recipe.model.merge_adapter:
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(stage / "merged")
            trainer.processing_class.save_pretrained(stage / "merged")
        atomic_write_text(stage / "recipe.yaml", recipe_yaml)
        atomic_write_json(stage / "metrics.json", metrics)
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
        )
        atomic_write_text(stage / "README.md", card)
        publish_folder(stage, output_dir)
        if push:
            repo_id = args.hub_model_id or output_dir.name
            url = push_folder(output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo)
            print(f"hf-transfer: pushed to {url}")
    accelerator.wait_for_everyone()


def load_trained(model_dir: str | os.PathLike):
    """Load a folder written by :func:`train`: a plain model, or a PEFT adapter on its base model."""
    path = Path(model_dir)
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
) -> dict[str, float]:
    """Accuracy and macro-F1 of a trained model folder on a labelled dataset (file, folder or Hub id)."""
    from transformers import EvalPrediction

    from .data import LabelSpace, encode_labels, load_table, require_column

    model, tokenizer = load_trained(model_dir)
    table = load_table(data, field="data", split=split)
    require_column(table, text_column, field="data", spec=data, option="text_column")
    require_column(table, label_column, field="data", spec=data, option="label_column")
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    names = [id2label[i] for i in range(len(id2label))]
    values = table[label_column]
    space = LabelSpace(names, from_strings=any(isinstance(v, str) for v in values))
    table = encode_labels(table, label_column, space, field="data", spec=data)
    texts, labels = table[text_column], table["labels"]
    logits = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        logits.append(model(**enc).logits.float())
    metrics = accuracy_metrics(EvalPrediction(predictions=torch.cat(logits).numpy(), label_ids=labels))
    return {**metrics, "num_examples": len(texts)}
