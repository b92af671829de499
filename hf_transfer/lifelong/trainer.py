"""``train_lifelong``: learn a recipe's tasks one after another, measure the accuracy matrix after each, and keep the
final model.

Each task trains for ``steps_per_task`` optimizer steps with a fresh ``transformers.Trainer`` (so Accelerate,
mixed precision, DDP and logging are the Trainer's), whose loss is the cross-entropy plus the method's penalty:

* ``naive``: nothing (sequential fine-tuning, the forgetting baseline);
* ``ewc`` / ``l2sp``: the penalties of :mod:`~hf_transfer.lifelong.regularizers`;
* ``replay``: the task's rows plus the :class:`~hf_transfer.lifelong.replay.ReplayBuffer` of earlier rows;
* ``adapter``: a new LoRA adapter and head per task on the frozen pretrained model (PEFT multi-adapter, saved as
  ``<task>/adapter_config.json`` ...); nothing shared trains, so nothing is forgotten, at the price of knowing the
  task at inference.

The freezing plans of a flat recipe apply to every method but ``adapter``: ``freeze_backbone`` and
``trainable_layers`` hold for the whole sequence, ``gradual_unfreezing_steps`` starts again with each task (its head
first), ``layerwise_lr_decay`` scales every task's optimizer.

One classification head is shared by every task except with ``adapter`` (the domain-incremental setting: the tasks
must have the same classes). The output folder holds the final model (a plain classifier, or the PEFT adapters, one
per task), ``accuracy_matrix.json`` and ``accuracy_matrix.png``, ``metrics.json`` (average accuracy and forgetting
after every step), ``recipe.yaml`` and a model card.

Under ``accelerate launch`` (DDP, e.g. ``recipes/accelerate/multi_cpu.yaml``) each process trains on its shard of
every task, as the Trainer shards any dataset, and every process must keep the same copy of everything the next
task depends on. So the accuracy matrix and the EWC Fisher are each computed on a disjoint share of the rows per
process and summed over the processes (the same numbers as one process, every row counted once); the replay
buffer is built from the whole task on every process (seeded) and compared between them by a hash; outputs are
written by the main process only. FSDP and DeepSpeed are refused (:mod:`hf_transfer.launch_check`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from transformers import set_seed

from ..backbones import head_parameter_names, load_classifier, load_tokenizer, set_trainable_top_layers
from ..data import MODEL_INPUT_KEYS
from ..defaults import DEFAULT_LORA
from ..errors import DataError
from ..families import TrainResult
from ..hub import atomic_write_json, discard_stage, finish_export, save_trainer_results, staging_dir
from ..preamble import begin_run
from ..tasklists.data import load_tasks, tokenize_tasks
from ..tasklists.recipe import resolve_recipe
from ..trainer import GradualUnfreezing, TransferTrainer
from .metrics import plot_accuracy_matrix, summarize
from .recipe import LifelongRecipe
from .regularizers import EWC, L2SP
from .replay import ReplayBuffer

logger = logging.getLogger(__name__)


class PenaltyTrainer(TransferTrainer):
    """A Trainer whose loss is the cross-entropy plus ``penalty(model)`` (on the unwrapped model). A
    :class:`~hf_transfer.trainer.TransferTrainer` without methods, for its ``layerwise_lr_decay`` optimizer."""

    def __init__(self, *args, penalty=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.penalty = penalty
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits.float(), labels.long())
        if self.penalty is not None:
            loss = loss + self.penalty(self.accelerator.unwrap_model(model))
        return (loss, outputs) if return_outputs else loss


class Collator:
    """Pad model inputs; labels as ``long``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = [{k: r[k] for k in MODEL_INPUT_KEYS if k in r} for r in rows]
        batch = dict(self.tokenizer.pad(features, padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long)
        return batch


class Processes:
    """This process's share of per-row work, and sums over all processes (with one process: every row, and the
    identity). What every process must hold identically (the accuracy matrix, the Fisher) is computed from disjoint
    shares and summed, so each row counts once whatever the number of processes."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.index = accelerator.process_index if accelerator is not None else 0
        self.count = accelerator.num_processes if accelerator is not None else 1

    def shard(self, table: Dataset) -> Dataset:
        """Rows ``index, index + count, ...`` of ``table``: disjoint shares that together hold every row once."""
        return table if self.count == 1 else table.select(range(self.index, len(table), self.count))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.count == 1 else self.accelerator.reduce(tensor, reduction="sum")

    def check_same(self, what: str, value: Any) -> None:
        """Raise if ``value`` (anything JSON can write) differs between the processes; compared by a hash."""
        if self.count == 1:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest()
        local = torch.tensor([int.from_bytes(digest[:7], "big")], dtype=torch.long, device=self.accelerator.device)
        every = self.accelerator.gather(local)
        if not bool((every == every[0]).all()):
            raise RuntimeError(f"lifelong: the {what} differs between processes; every process must build the same "
                               "one (same data files, same seed)")


def _batches(table: Dataset, collate: Collator, batch_size: int, device):
    for start in range(0, len(table), batch_size):
        rows = table.select(range(start, min(start + batch_size, len(table)))).to_list()
        yield {k: v.to(device) for k, v in collate(rows).items()}


@torch.no_grad()
def accuracy(model: torch.nn.Module, table: Dataset, collate: Collator, *, batch_size: int = 64,
             processes: Processes | None = None) -> float:
    """Accuracy of ``model`` on a tokenised table with ``labels``; with ``processes``, each scores its share of the
    rows and the counts are summed, so every process returns the accuracy on the whole table."""
    processes = processes or Processes()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = processes.shard(table)
    correct = 0
    for batch in _batches(rows, collate, batch_size, device):
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    model.train(was_training)
    counts = processes.sum(torch.tensor([correct, len(rows)], dtype=torch.float64, device=device))
    return float(counts[0] / counts[1])


def train_lifelong(recipe: LifelongRecipe | str | dict | None = None, *, callbacks: list | None = None,
                   **overrides: Any) -> TrainResult:
    """Learn a lifelong recipe's tasks in order (see the module docstring). ``callbacks`` join every task's
    Trainer. Returns a :class:`~hf_transfer.families.TrainResult` whose ``extras`` hold the accuracy ``matrix``."""
    from transformers.trainer_utils import SaveStrategy

    recipe = resolve_recipe(recipe, overrides, LifelongRecipe, key="lifelong_method", kind="lifelong")
    # Snapshot, push request (token included), seed (hf_transfer/preamble.py). One Trainer per task: a checkpoint
    # would hold one task's state only, so a lifelong run does not resume.
    start = begin_run(recipe, resumable=False, family="lifelong")
    recipe_yaml, push_requested = start.recipe_yaml, start.push
    args, ll = recipe.training, recipe.lifelong
    args.max_steps = ll.steps_per_task
    args.save_strategy = SaveStrategy.NO  # one Trainer per task: its checkpoints would collide
    plan = recipe.model
    if plan.gradual_unfreezing_steps:
        args.ddp_find_unused_parameters = True  # layers join training mid-task
    tasks = load_tasks(recipe.tasks, seed=args.seed)
    method = ll.lifelong_method
    first = tasks[0]
    if method != "adapter":
        for i, task in enumerate(tasks[1:], start=1):
            if task.num_labels != first.num_labels:
                raise DataError(f"tasks[{i}].data: {task.num_labels} classes, but tasks[0] has {first.num_labels}; "
                                f"lifelong_method: {method} shares one head, so every task needs the same classes "
                                "(or use lifelong_method: adapter)")
    tokenizer = load_tokenizer(recipe.model.model_name_or_path, revision=recipe.model.revision,
                               trust_remote_code=recipe.model.trust_remote_code)
    tokenize_tasks(tasks, tokenizer, max_length=recipe.max_length, task_ids=list(range(len(tasks))),
                   progress=not args.disable_tqdm)
    model = load_classifier(recipe.model.model_name_or_path, num_labels=first.num_labels,
                            id2label=first.labels.id2label, revision=recipe.model.revision,
                            trust_remote_code=recipe.model.trust_remote_code)
    if plan.freeze_backbone:  # the freezing plan holds for every task
        set_trainable_top_layers(model, 0)
    elif plan.trainable_layers is not None:
        set_trainable_top_layers(model, plan.trainable_layers)
    collate = Collator(tokenizer)
    penalty, ewc, buffer = None, None, None
    if method == "ewc":
        ewc = EWC(weight=ll.ewc_lambda, gamma=ll.ewc_gamma, max_examples=ll.fisher_samples)
        penalty = ewc.penalty
    elif method == "l2sp":
        penalty = L2SP(model, head=head_parameter_names(model), alpha=ll.l2sp_alpha, beta=ll.l2sp_beta).penalty
    elif method == "replay":
        buffer = ReplayBuffer(ll.replay_size, seed=args.seed)
    peft_block = {"peft_type": "LORA", **DEFAULT_LORA, **(recipe.peft or {})}

    names = [t.name for t in tasks]
    matrix = np.full((len(tasks), len(tasks)), np.nan)
    start = time.time()
    for i, task in enumerate(tasks):
        if method == "adapter":
            # Seeded per task, so the new adapter starts the same however many processes trained the earlier ones.
            set_seed(args.seed + i)
            model = _add_adapter(model, task.name, peft_block)
        train_rows = task.train
        if buffer is not None and len(buffer):
            replayed = Dataset.from_list(buffer.rows()).cast(task.train.features)
            train_rows = concatenate_datasets([task.train, replayed])
        # Gradual unfreezing starts again with each task: its head first, then one more layer from the top every
        # gradual_unfreezing_steps steps of that task.
        unfreezing = [GradualUnfreezing(model, plan.gradual_unfreezing_steps)] if plan.gradual_unfreezing_steps else []
        trainer = PenaltyTrainer(model=model, args=args, train_dataset=train_rows, data_collator=collate,
                                 processing_class=tokenizer, penalty=penalty,
                                 callbacks=list(callbacks or []) + unfreezing,
                                 layerwise_lr_decay=plan.layerwise_lr_decay)
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
        processes = Processes(trainer.accelerator)
        if ewc is not None:
            shuffled = task.train.shuffle(seed=args.seed)
            rows = processes.shard(shuffled.select(range(min(ll.fisher_samples, len(shuffled)))))
            ewc.consolidate(model, _batches(rows, collate, args.per_device_eval_batch_size, args.device),
                            sum_over_processes=processes.sum)
        if buffer is not None:
            buffer.add_task(task.name, task.train.to_list())
            processes.check_same("replay buffer", buffer.rows())
        for j, other in enumerate(tasks):
            if j > i and (not ll.eval_future_tasks or method == "adapter"):
                continue  # an adapter for a task not seen yet does not exist
            if method == "adapter":
                model.set_adapter(other.name)
            matrix[i, j] = accuracy(model, other.eval, collate, batch_size=args.per_device_eval_batch_size,
                                    processes=processes)
        if method == "adapter":
            model.set_adapter(task.name)
        if trainer.is_world_process_zero():
            seen = summarize(matrix[: i + 1])
            logger.info(f"hf-transfer: lifelong {method} after {task.name} ({i + 1}/{len(tasks)}): average accuracy "
                        f"{seen['average_accuracy']:.4f}, forgetting {seen['forgetting']:.4f}")
    summary = summarize(matrix)
    metrics: dict[str, Any] = {"lifelong_method": method, "train_runtime": time.time() - start,
                               "steps_per_task": ll.steps_per_task, **summary}
    for j, name in enumerate(names):
        metrics[f"{name}/final_accuracy"] = float(matrix[-1, j])
    output_dir = Path(args.output_dir)
    if trainer.is_world_process_zero():
        stage = staging_dir(output_dir)
        try:
            model.save_pretrained(stage)
            tokenizer.save_pretrained(stage)
            atomic_write_json(stage / "accuracy_matrix.json",
                              {"tasks": names, "matrix": [[None if np.isnan(v) else float(v) for v in row]
                                                          for row in matrix]})
            plot_accuracy_matrix(matrix, names, stage / "accuracy_matrix.png", title=method)
            save_trainer_results(trainer, metrics, stage)  # the last task's Trainer: its loss curve
            card = lifelong_card(recipe, metrics, names, recipe_yaml)
        except BaseException:
            discard_stage(stage)
            raise
        finish_export(stage, output_dir, recipe_yaml=recipe_yaml, metrics=metrics, card=card, push=push_requested)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(metrics, model, tokenizer, trainer, recipe, output_dir,
                       extras={"matrix": matrix, "is_main_process": trainer.is_world_process_zero()})


def _add_adapter(model, name: str, block: dict[str, Any]):
    """A new LoRA adapter (and its own copy of the head) named ``name``, made the one that trains."""
    from peft import PeftModel, get_peft_config, get_peft_model

    from ..backbones import head_module_names

    values = {**block, "task_type": "SEQ_CLS"}
    values["modules_to_save"] = sorted(set(values.get("modules_to_save") or []) | set(head_module_names(model)))
    config = get_peft_config(values)
    if not isinstance(model, PeftModel):
        return get_peft_model(model, config, adapter_name=name)
    model.add_adapter(name, config)
    model.set_adapter(name)
    return model


def lifelong_card(recipe: LifelongRecipe, metrics: dict[str, Any], names: list[str], recipe_yaml: str) -> str:
    """The card of the final model of a task sequence: each task's accuracy after the last one in ``model-index``,
    the average accuracy and forgetting after every step, how to load the classifier or the per-task adapters."""
    from ..cards import PROJECT_URL, CardContent, EvalSet, build_card, display_path, hub_base_model, hub_link, where
    from ..defaults import __version__

    base = recipe.model.model_name_or_path
    method = recipe.lifelong.lifelong_method
    hub_model_id = recipe.training.hub_model_id
    steps = metrics["average_accuracy_per_step"], metrics["forgetting_per_step"]
    rows = "\n".join(f"| {i + 1} | {n} | {a:.4f} | {f:.4f} |" for i, (n, a, f) in enumerate(zip(names, *steps)))
    evaluations = []
    for task in recipe.tasks:
        queries = "eval_data" if task.eval_data else f"{task.eval_fraction:.0%} of the rows, held out"
        evaluations.append(EvalSet(
            task.name, task.eval_data or task.data, {"final_accuracy": metrics[f"{task.name}/final_accuracy"]},
            split=task.eval_split if task.eval_data else task.split,
            config=task.eval_config if task.eval_data else task.config,
            note=f"{queries}, after the last task"))
    first = names[0]
    if method == "adapter":
        usage = f"""A set of PEFT adapters, one per task (each with its own head), in `<task>/`:

```python
from peft import AutoPeftModelForSequenceClassification
model = AutoPeftModelForSequenceClassification.from_pretrained({where(hub_model_id, first)!s}"""
        usage += (f", subfolder=\"{first}\")\n```" if hub_model_id else ")\n```")
    else:
        usage = f"""A plain classifier:

```python
from transformers import pipeline
classifier = pipeline("text-classification", model={where(hub_model_id)})
```"""
    name = (hub_base_model(base) or display_path(base) or base).split("/")[-1]
    return build_card(CardContent(
        base_model=base,
        title=hub_model_id or f"{name} learned on {len(names)} tasks in sequence ({method})",
        intro=(f"Trained from {hub_link(base)} with [hf-transfer]({PROJECT_URL}) {__version__} on "
               f"{', '.join(names)}, in that order, {recipe.lifelong.steps_per_task} steps each."),
        usage=usage,
        pipeline_tag="text-classification",
        library_name="peft" if method == "adapter" else "transformers",
        tags=["hf-transfer", "lifelong-learning", "continual-learning", f"lifelong-{method}"],
        data=[(f"task {i + 1}: {t.name}", t.data) for i, t in enumerate(recipe.tasks)],
        evaluations=evaluations,
        metrics=metrics,
        recipe_yaml=recipe_yaml,
        hub_model_id=hub_model_id,
        sections=[("Accuracy after each task", f"""| step | task learned | average accuracy so far | forgetting |
|---|---|---|---|
{rows}

Final average accuracy {metrics['average_accuracy']:.4f}, forgetting {metrics['forgetting']:.4f}, backward transfer
{metrics['backward_transfer']:.4f}. The accuracy matrix is in `accuracy_matrix.json` / `accuracy_matrix.png`.""")],
    ))
