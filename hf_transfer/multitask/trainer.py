"""``MultiTaskTrainer``: the Trainer with one task per batch, a shared task schedule, per-task evaluation.

What it changes from :class:`~hf_transfer.trainer.TransferTrainer` (whose logging it reuses):

* the training loader draws batches from :class:`~hf_transfer.multitask.sampling.TaskBatchSampler`: every process
  computes the same task schedule from the seed and takes its own rows of the step's task, so DDP's forward graphs
  match at every step (the loader's ``BatchSamplerShard`` wrapper is made a pass-through, as the Trainer does for its
  own rank-aware ``BatchRebalanceSampler``);
* the loss is the model's (weighted task loss plus sharing penalties); its parts are logged (``task_loss``,
  ``l2_tie``, ``orthogonality``, ``adversarial``) and the rows trained per task are counted on every process;
* evaluating a task (an ``eval_dataset`` key, or ``evaluate_task``) uses that task's metrics (accuracy and macro-F1,
  or MSE and Pearson for regression);
* the recipe's transfer methods (:mod:`hf_transfer.multitask.methods`) add their losses through the flat path's
  method stack, on the feature the batch's task head receives (one :class:`~hf_transfer.backbones.FeatureTap` per
  head); a batch's target rows (``domain == 1``, labels -100) enter no task loss;
* ``layerwise_lr_decay`` scales each encoder's layers (:func:`hf_transfer.multitask.freezing.layerwise_groups`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers.trainer_utils import seed_worker

from ..backbones import FeatureTap
from ..trainer import TransferTrainer
from .data import TASK_ID_COLUMN, task_metrics
from .freezing import layerwise_groups
from .sampling import TaskBatchSampler

PENALTIES = ("l2_tie", "orthogonality", "adversarial")


class MultiTaskTrainer(TransferTrainer):
    """A Trainer for :class:`~hf_transfer.multitask.MultiTaskModel`.

    Args:
        task_names: the model's task names, by task id.
        problem_types: ``{task name: "classification" | "regression"}``.
        train_task_sizes: ``[(task id, rows)]`` of the trained tasks, in the order their rows lie in
            ``train_dataset``.
        task_sampling, sampling_temperature: see :mod:`hf_transfer.multitask.sampling`.
        *args, **kwargs: as for ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args,
        task_names: list[str],
        problem_types: dict[str, str],
        train_task_sizes: list[tuple[int, int]] | None = None,
        task_sampling: str = "proportional",
        sampling_temperature: float = 1.0,
        feature_modules: dict[str, nn.Module] | None = None,
        **kwargs,
    ):
        feature_modules = dict(feature_modules or {})
        if kwargs.get("methods") and not feature_modules:
            raise ValueError("MultiTaskTrainer: methods need feature_modules (one per trained task head)")
        # The flat trainer taps one feature module; here each task head has its own (below).
        kwargs["feature_module"] = next(iter(feature_modules.values()), None)
        super().__init__(*args, **kwargs)
        if self._tap is not None:
            self._tap.remove()
            self._tap = None
        self._taps = {name: FeatureTap(module, model=self.model.heads[name])
                      for name, module in feature_modules.items()} if self.method_stack.methods else {}
        self.task_names = list(task_names)
        self.problem_types = dict(problem_types)
        self.train_task_sizes = list(train_task_sizes or [])
        self.task_sampling = task_sampling
        self.sampling_temperature = sampling_temperature
        # Counted on the device and read once at the end: a per-step .cpu() would wait on an accelerator every step.
        self.rows_per_task = torch.zeros(len(self.task_names), dtype=torch.long, device=self.args.device)

    # ---- data ----------------------------------------------------------------------------------------------------

    def task_batch_sampler(self) -> TaskBatchSampler:
        ids, sizes = zip(*self.train_task_sizes)
        return TaskBatchSampler(
            sizes,
            batch_size=self._train_batch_size,
            num_processes=self.args.world_size,
            process_index=self.args.process_index,
            strategy=self.task_sampling,
            temperature=self.sampling_temperature,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            task_ids=ids,
        )

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("MultiTaskTrainer: training requires a train_dataset")
        sampler = self.task_batch_sampler()
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=self.args.dataloader_num_workers,
                                   rank=self.args.process_index),
        )
        loader = self.accelerator.prepare(loader)
        # The sampler already yields this process's rows; Accelerate's BatchSamplerShard would shard them again.
        wrapper = getattr(loader, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is sampler:
            wrapper.num_processes = 1
            wrapper.process_index = 0
        return loader

    # ---- loss ----------------------------------------------------------------------------------------------------

    def layerwise_groups(self, model):
        # The flat trainer finds a classifier's backbone by its prefix; a multi-task model's encoders are found
        # through views (hf_transfer.multitask.freezing).
        return layerwise_groups

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs:
            raise ValueError("MultiTaskTrainer.compute_loss needs `labels` in the batch")
        domain = inputs.pop("domain", None)
        extras = {key: inputs.pop(key) for key in self._method_batch_keys if key in inputs}
        # Target rows carry labels -100: the model's task loss (cross-entropy) leaves them out.
        outputs = model(**inputs)
        loss = outputs.loss
        task_ids = inputs[TASK_ID_COLUMN]
        features = self._pop_features(model.training)
        if model.training:
            self._accumulate("task_loss", outputs.task_loss.detach())
            for key in PENALTIES:
                value = getattr(outputs, key, None)
                if value is not None:
                    self._accumulate(key, value.detach())
            labelled = task_ids if domain is None else task_ids[domain == 0]
            self.rows_per_task += torch.bincount(labelled.to(self.rows_per_task.device),
                                                 minlength=len(self.task_names))
            terms = {"task_loss": outputs.task_loss}
            if features is not None:
                loss = loss + self._method_loss(outputs.logits, features, inputs, domain, extras, terms)
            terms["total loss"] = loss
            self.loss_guard.observe(self.state.global_step + 1, terms)
        return (loss, outputs) if return_outputs else loss

    def _pop_features(self, training: bool = True) -> torch.Tensor | None:
        """The features of the head that ran (a training batch holds one task); every tap is cleared, so that no
        feature of an evaluation batch (which may hold several tasks) is left behind."""
        found = [tap.features for tap in self._taps.values() if tap.features is not None]
        for tap in self._taps.values():
            tap.features = None
        if not training:
            return None
        if len(found) > 1:
            raise RuntimeError("MultiTaskTrainer: a training batch with transfer methods must hold one task's rows")
        return found[0] if found else None

    def _method_loss(self, logits, features, inputs, domain, extras, terms) -> torch.Tensor:
        """The method stack's loss on this batch, as the flat trainer computes it (:meth:`method_loss`)."""
        labels = inputs["labels"]
        if domain is None:
            domain = torch.zeros_like(labels, dtype=torch.long)
        rows = {k: v for k, v in inputs.items() if torch.is_tensor(v) and v.dim() > 0 and k != "labels"}
        return self.method_loss(logits, features, labels, domain, None, rows, extras, terms)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Only the loss and the logits: penalties are training-time numbers.
        ignore = list(ignore_keys or []) + ["task_loss", *PENALTIES]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore)

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        # The Trainer evaluates a dict of eval sets one at a time, by key (the task name) and with the prefix
        # "<prefix>_<key>"; either tells which task's metrics apply.
        name = eval_dataset if isinstance(eval_dataset, str) else None
        for task in self.problem_types:
            if name is None and metric_key_prefix in (task, f"eval_{task}"):
                name = task
        if name in self.problem_types:
            self.compute_metrics = task_metrics(self.problem_types[name])
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def evaluate_task(self, name: str, dataset) -> dict[str, float]:
        """Metrics of one task on ``dataset``, keyed ``<name>_<metric>`` (``books_accuracy``, ``books_loss`` ...)."""
        self.compute_metrics = task_metrics(self.problem_types[name])
        return super().evaluate(dataset, metric_key_prefix=name)

    def total_rows_per_task(self) -> dict[str, int]:
        """Training rows each task contributed, summed over processes (each process counts its own)."""
        counts = self.rows_per_task
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return {name: int(c) for name, c in zip(self.task_names, counts.cpu().tolist())}
