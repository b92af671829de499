"""``train_pretrain``: continued masked-LM training (domain- or task-adaptive pre-training, Gururangan et al. 2020,
"Don't Stop Pretraining", ACL) on unlabelled text, exported as a plain ``AutoModelForMaskedLM`` folder that a task
recipe names as ``model_name_or_path``.

How a run goes:

* the model is the checkpoint's ``AutoModelForMaskedLM``. A checkpoint without a masked-LM head (a
  sentence-transformers export such as all-MiniLM-L6-v2) gets the architecture's own head, its transform freshly
  initialised and its output layer tied to the input embeddings, as transformers builds it (the approach of
  ``method: mlm``'s :func:`~hf_transfer.methods.mlm.build_mlm_head`); ``head_from_checkpoint`` in the metrics says
  which;
* a ``transformers.Trainer`` trains it on whole texts masked afresh every step
  (:class:`~hf_transfer.pretrain.data.PretrainCollator`); checkpoints (``save_strategy``/``save_steps``) resume with
  ``resume_from_checkpoint``, random state included;
* with a ``peft:`` block only the adapter and the head's transform train (a fresh transform must learn), and the
  adapter is merged into the model at export;
* evaluation (:class:`MaskedLMTrainer`) scores the mean cross-entropy over every masked token of the held-out texts
  (masked once, so that every evaluation scores the same tokens) and its exponential, the perplexity;
* the export holds the masked-LM model, the tokenizer, ``metrics.json``, ``recipe.yaml`` and a model card. The base
  model's own weights that the masked-LM class does not hold (BERT's pooler) are carried over unchanged, so a
  sequence classifier built on the export starts from the same pooler as one built on the original checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from ..errors import DataError, RecipeError, UserError
from ..families import TrainResult
from ..hub import discard_stage, finish_export, save_trainer_results, staging_dir
from ..methods.mlm import quiet_transformers
from ..preamble import begin_run
from .data import PretrainCollator, mask_once, read_texts, split_held_out, tokenize_texts
from .recipe import PretrainRecipe

logger = logging.getLogger(__name__)


class ChosenRows:
    """Forward pre-hook on the masked-LM head: while ``mask`` is set, the head gets only the hidden states of the
    chosen (masked) positions, ``(tokens, hidden)``, instead of every position's. The head's transform works token
    by token, so the chosen tokens' scores are the same; the output layer (hidden x vocabulary, half of a small
    model's compute) runs on ~15% of the tokens."""

    def __init__(self):
        self.mask: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.mask is None:
            return None
        return (args[0][self.mask], *args[1:])


def masked_lm_head(model: nn.Module) -> nn.Module | None:
    """The one module of a masked-LM model (PEFT-wrapped or not) that maps the base model's hidden states to
    vocabulary scores (BERT's ``cls``, RoBERTa's ``lm_head``), or ``None`` when the head is spread over several
    modules (DistilBERT), which then score every position."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", "")
    heads = [m for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]
    return heads[0] if len(heads) == 1 else None


class MaskedLMTrainer(Trainer):
    """A Trainer for masked-LM training whose losses are computed on the masked positions only (:class:`ChosenRows`).

    Training: the mean cross-entropy over the batch's masked tokens (as the model's own loss), scaled for gradient
    accumulation by the Trainer. Evaluation: the mean over every masked token of the evaluation set (not a mean of
    per-batch means), summed over the processes, each scoring a disjoint share of the rows; it reports
    ``<prefix>_loss``, ``<prefix>_perplexity`` (its exponential) and ``<prefix>_masked_tokens``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss is a mean: the Trainer scales it for accumulation
        head = masked_lm_head(self.model)
        self._rows = ChosenRows() if head is not None else None
        self._hook = head.register_forward_pre_hook(self._rows) if head is not None else None

    def release_head(self) -> None:
        """Remove the head's hook (the trained model is handed back as a plain model)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = self._rows = None

    def masked_loss_sum(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(summed cross-entropy, masked tokens)`` of one batch (``labels``: -100 where nothing is predicted)."""
        labels = inputs["labels"]
        features = {k: v for k, v in inputs.items() if k != "labels"}
        chosen = labels != -100
        if self._rows is not None:
            self._rows.mask = chosen
            try:
                scores = model(**features).logits  # (masked tokens, vocabulary)
            finally:
                self._rows.mask = None
            target = labels[chosen]
        else:
            scores = model(**features).logits.flatten(0, 1)
            target = labels.flatten()
        summed = F.cross_entropy(scores.float(), target, ignore_index=-100, reduction="sum")
        return summed, (target != -100).sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:  # prediction loops want the model's own outputs
            return super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        summed, count = self.masked_loss_sum(model, inputs)
        return summed / count.clamp_min(1)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("MaskedLMTrainer.evaluate needs an evaluation dataset")
        index, count = self.args.process_index, self.args.world_size
        share = dataset.select(range(index, len(dataset), count)) if count > 1 else dataset
        loader = torch.utils.data.DataLoader(share, batch_size=self.args.per_device_eval_batch_size,
                                             collate_fn=self.data_collator)
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # summed loss, masked tokens
        start = time.time()
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(self.args.device) for k, v in batch.items()}
                with self.compute_loss_context_manager():
                    summed, tokens = self.masked_loss_sum(model, batch)
                total += torch.stack([summed.double(), tokens.double()])
        model.train(was_training)
        if count > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        summed, tokens = total.tolist()
        mean = summed / tokens if tokens else float("nan")
        metrics = {f"{metric_key_prefix}_loss": mean,
                   f"{metric_key_prefix}_perplexity": math.exp(mean) if math.isfinite(mean) else float("nan"),
                   f"{metric_key_prefix}_masked_tokens": int(tokens),
                   f"{metric_key_prefix}_runtime": round(time.time() - start, 4)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


# ---- the model ---------------------------------------------------------------------------------------------------


def load_masked_lm(recipe: PretrainRecipe):
    """``(model, tokenizer, head_missing, carried)``: the checkpoint as an ``AutoModelForMaskedLM``, the names of its
    head weights the checkpoint lacked (freshly initialised), and the base model's own weights the masked-LM class
    does not hold, to be written back at export (:func:`base_only_weights`)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from ..backbones import _load_error, resolve_model_path

    m = recipe.model
    path = resolve_model_path(m.model_name_or_path)
    options = {"revision": m.revision, "trust_remote_code": m.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
    except (OSError, ValueError) as err:
        raise _load_error(m.model_name_or_path, err) from None
    if getattr(tokenizer, "mask_token", None) is None:
        raise RecipeError(f"model_name_or_path: the tokenizer of {m.model_name_or_path!r} has no mask token; "
                          "masked-LM training needs an encoder such as BERT, RoBERTa or MiniLM")
    try:
        with quiet_transformers():
            model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, **options)
    except ValueError as err:  # no masked-LM class for this architecture
        raise RecipeError(f"model_name_or_path: {m.model_name_or_path!r} has no masked-LM model in transformers "
                          f"({str(err).splitlines()[0]}); use an encoder such as BERT, RoBERTa or MiniLM") from None
    except OSError as err:
        raise _load_error(m.model_name_or_path, err) from None
    prefix = model.base_model_prefix
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(f"{prefix}.") and "decoder.weight" not in k)
    return model, tokenizer, missing, base_only_weights(path, model, options)


def base_only_weights(path: str, model: nn.Module, options: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of the checkpoint's base model (``AutoModel``) that ``model``'s base model lacks, as the
    checkpoint has them (BERT's pooler: the masked-LM class builds its encoder without one). Weights the checkpoint
    does not have are left out. Keys are the masked-LM model's (``bert.pooler.dense.weight``)."""
    from transformers import AutoModel

    with torch.device("meta"):  # names only: nothing is allocated
        skeleton = AutoModel.from_config(model.config, trust_remote_code=options["trust_remote_code"])
    own = set(model.base_model.state_dict())
    extra = [k for k in skeleton.state_dict() if k not in own]
    if not extra:
        return {}
    with quiet_transformers():
        base, info = AutoModel.from_pretrained(path, output_loading_info=True, **options)
    missing = set(info["missing_keys"])
    state = base.state_dict()
    prefix = model.base_model_prefix
    return {f"{prefix}.{k}": state[k].detach().clone() for k in extra if k not in missing}


def head_module_names(model: nn.Module) -> list[str]:
    """The masked-LM head's modules with weights, the output layer (tied to the input embeddings) left out:
    ``cls.predictions.transform`` for BERT, ``lm_head.dense`` and ``lm_head.layer_norm`` for RoBERTa."""
    output = model.get_output_embeddings()
    prefix = model.base_model_prefix
    names: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        inside = {id(m) for m in module.modules()}
        if module is output:
            return
        if output is not None and id(output) in inside:
            for child_name, child in module.named_children():
                visit(f"{name}.{child_name}" if name else child_name, child)
        elif any(True for _ in module.parameters()):
            names.append(name)

    for name, child in model.named_children():
        if name != prefix:
            visit(name, child)
    return names


def wrap_with_adapter(model: nn.Module, block: dict[str, Any]):
    """A PEFT model of ``block`` on ``model``; the head's transform trains and is saved with the adapter
    (``modules_to_save``), since a fresh one must learn."""
    from peft import get_peft_config, get_peft_model

    values = dict(block)
    values["modules_to_save"] = sorted(set(values.get("modules_to_save") or []) | set(head_module_names(model)))
    try:
        return get_peft_model(model, get_peft_config(values))
    except ValueError as err:  # e.g. no module matched target_modules
        names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise RecipeError(f"peft: {str(err).splitlines()[0]} Linear layers of this model: "
                          f"{', '.join(names)}") from None


# ---- the run -----------------------------------------------------------------------------------------------------


def load_pretrain_data(recipe: PretrainRecipe, tokenizer, *, seed: int):
    """``(train set, eval set or None, texts per split)``: read, held out, tokenised; the eval set masked once."""
    a = recipe.args
    texts = read_texts(a.train_data, data_format=a.data_format, column=a.text_column, field="train_data",
                       split=a.data_split, config=a.data_config)
    held_out: list[str] | None = None
    if a.eval_data:
        held_out = read_texts(a.eval_data, data_format=a.data_format, column=a.text_column, field="eval_data",
                              split=a.eval_split, config=a.data_config)
    elif a.eval_fraction > 0:
        texts, held_out = split_held_out(texts, a.eval_fraction, seed=seed)
    if a.max_train_samples:
        texts = texts[: a.max_train_samples]
    if held_out is not None and a.max_eval_samples:
        held_out = held_out[: a.max_eval_samples]
    train_set = tokenize_texts(texts, tokenizer, max_length=recipe.max_length)
    eval_set = None
    if held_out:
        eval_set = mask_once(tokenize_texts(held_out, tokenizer, max_length=recipe.max_length), tokenizer,
                             a, seed=seed)
    return train_set, eval_set, {"train_texts": len(texts), "eval_texts": len(held_out or [])}


def train_pretrain(recipe: PretrainRecipe, *, callbacks: list | None = None) -> TrainResult:
    """The ``pretrain`` family's run, from a parsed and checked recipe: read the text, load the masked-LM model,
    train, score the perplexity, export (see the module docstring)."""
    from ..tasklists.recipe import resolve_recipe

    recipe = resolve_recipe(recipe, {}, PretrainRecipe, key="train_data", kind="pretrain")
    start = begin_run(recipe)  # snapshot, push request, resume, seed (hf_transfer/preamble.py)
    args = recipe.training
    a = recipe.args
    model, tokenizer, head_missing, carried = load_masked_lm(recipe)
    with args.main_process_first(desc="reading and tokenising"):
        train_set, eval_set, counts = load_pretrain_data(recipe, tokenizer, seed=args.seed)
    if len(train_set) == 0:
        raise DataError("train_data: no text to train on")
    if head_missing:
        logger.info("pretrain: the checkpoint has no masked-LM head (%s); the head starts from random weights, its "
                    "output layer tied to the input embeddings", ", ".join(head_missing))
    if recipe.peft:
        model = wrap_with_adapter(model, recipe.peft)
    collator = PretrainCollator(tokenizer, a)
    trainer = MaskedLMTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                              data_collator=collator, processing_class=tokenizer, callbacks=callbacks)
    metrics: dict[str, Any] = {"head_from_checkpoint": not head_missing, **counts}
    if eval_set is not None and a.eval_before_training:
        before = trainer.evaluate(metric_key_prefix="base_eval")
        metrics.update(base_eval_loss=before["base_eval_loss"], base_perplexity=before["base_eval_perplexity"])
    output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics.update(train_loss=output.training_loss, train_steps=output.global_step,
                   **{k: v for k, v in output.metrics.items() if k != "train_loss"})
    if not math.isfinite(output.training_loss):
        raise UserError(f"train_loss: training diverged ({output.training_loss}); lower learning_rate")
    if eval_set is not None:
        after = trainer.evaluate()
        metrics.update(eval_loss=after["eval_loss"], perplexity=after["eval_perplexity"],
                       eval_masked_tokens=after["eval_masked_tokens"])
    trainer.release_head()
    final = trainer.accelerator.unwrap_model(trainer.model)
    if recipe.peft:
        final = final.merge_and_unload()  # a plain masked-LM model: usable as a base without PEFT
    output_dir = Path(args.output_dir)
    if trainer.is_world_process_zero():
        stage = staging_dir(output_dir)
        try:
            save_masked_lm(final, tokenizer, stage, carried)
            save_trainer_results(trainer, metrics, stage)
            card = pretrain_card(recipe, metrics, start.recipe_yaml)
        except BaseException:
            discard_stage(stage)
            raise
        finish_export(stage, output_dir, recipe_yaml=start.recipe_yaml, metrics=metrics, card=card, push=start.push)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(metrics, final, tokenizer, trainer, recipe, output_dir)


def save_masked_lm(model: nn.Module, tokenizer, folder: Path, carried: dict[str, torch.Tensor]) -> None:
    """Save the masked-LM model (safetensors) with the carried base weights (:func:`base_only_weights`) and the
    tokenizer into ``folder``."""
    state = None
    if carried:
        state = {**model.state_dict(), **{k: v.to(next(model.parameters()).device) for k, v in carried.items()}}
    model.save_pretrained(folder, state_dict=state)
    tokenizer.save_pretrained(folder)


def pretrain_card(recipe: PretrainRecipe, metrics: dict[str, Any], recipe_yaml: str) -> str:
    """The card of a pre-trained model: what it was trained on, its perplexity before and after, and how to use it
    as the base of a task recipe."""
    from ..cards import PROJECT_URL, CardContent, EvalSet, build_card, display_path, hub_base_model, hub_link, where
    from ..defaults import __version__

    a = recipe.args
    base = recipe.model.model_name_or_path
    hub_model_id = recipe.training.hub_model_id
    evaluations = []
    if "perplexity" in metrics:
        held = a.eval_data[0] if a.eval_data else a.train_data[0]
        note = "eval_data" if a.eval_data else f"{a.eval_fraction:.0%} of the texts, held out"
        evaluations.append(EvalSet("held-out text", held, {"perplexity": metrics["perplexity"]},
                                   split=a.eval_split if a.eval_data else None, note=note, task_type="fill-mask"))
    name = (hub_base_model(base) or display_path(base) or base).split("/")[-1]
    before = ""
    if "base_perplexity" in metrics and "perplexity" in metrics:
        before = (f" Perplexity on the held-out text: {metrics['base_perplexity']:.2f} before, "
                  f"{metrics['perplexity']:.2f} after.")
    adapter = " through a LoRA adapter, merged into the weights" if recipe.peft else ""
    usage = f"""A plain masked-LM model: fill masks with it, or start a task from it.

```python
from transformers import pipeline
fill = pipeline("fill-mask", model={where(hub_model_id)})
```

```bash
hf-transfer train recipes/text_classification/finetune.yaml --model_name_or_path {where(hub_model_id)[1:-1]}
```"""
    return build_card(CardContent(
        base_model=base,
        title=hub_model_id or f"{name}, masked-LM training continued on domain text",
        intro=(f"{hub_link(base)} trained further with the masked-LM objective{adapter} on unlabelled text "
               f"({metrics.get('train_texts', 0)} texts, {metrics.get('train_steps', 0)} steps, "
               f"{a.mlm_probability:.0%} of the tokens masked) with [hf-transfer]({PROJECT_URL}) {__version__}."
               f"{before}"),
        usage=usage,
        pipeline_tag="fill-mask",
        library_name="transformers",
        tags=["hf-transfer", "domain-adaptive-pretraining", "fill-mask"],
        data=[("train", spec) for spec in a.train_data] + [("eval", spec) for spec in a.eval_data or []],
        evaluations=evaluations,
        metrics=metrics,
        recipe_yaml=recipe_yaml,
        hub_model_id=hub_model_id,
    ))
