"""``TransferTrainer``: the ``transformers.Trainer`` with transfer objectives added to its loss.

What it adds to the Trainer, and nothing else:

* the supervised loss is computed here on the *source* rows of a batch only, with optional per-row
  ``sample_weight`` (instance weighting); target rows (``domain == 1``) carry no label into any loss;
* each registered method in the recipe adds ``trade_off * loss`` computed from the logits and the features the
  classifier head sees (captured by a forward hook, so any architecture works);
* a method may read batch keys the model never sees (its ``batch_keys``, handed over in ``StepBatch.extras``) and
  rows its collator appended after the batch's own (mlm's masked copies): the model runs on every row, the losses
  here and the ``StepBatch`` cover the first ``len(labels)``;
* method parameters (e.g. a domain discriminator) are optimised with the model, wrapped for DDP when several
  processes run (under FSDP and DeepSpeed, sharded as a submodule of the model), saved in every checkpoint and
  restored on resume, and never exported;
* the task loss and every method's scalars are averaged between logging steps and logged;
* layer-wise learning-rate decay and gradual unfreezing (see :mod:`hf_transfer.backbones`);
* optional extra metrics at each periodic evaluation (``extra_eval_metrics``; the label-free validators of
  :mod:`hf_transfer.selection` use it), logged and compared like any ``eval_*`` metric.

The trainer knows no method by name (DESIGN.md principle 2).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback

from .backbones import FeatureTap, encoder_layers, layerwise_lr_groups, set_trainable_top_layers
from .distributed import gather_step_batch
from .errors import TrainingDivergedError
from .losses import weighted_cross_entropy  # noqa: F401  (importable from here, as before)
from .methods import StepBatch, TransferMethod
from .tasks.base import Task

METHOD_STATE_FILE = "transfer_methods.safetensors"
#: Under FSDP and DeepSpeed the method stack becomes a submodule of the model by this name (TransferTrainer.__init__).
METHODS_SUBMODULE = "hf_transfer_methods"


def exact_eval_loss(predictions, label_ids) -> float | None:
    """Mean cross-entropy over the labelled rows of gathered evaluation outputs.

    The Trainer's own ``eval_loss`` averages per-batch losses; with several processes the last batch is evened out
    with repeated rows, which enter that average. The gathered logits have those rows removed, so the loss
    recomputed from them is the one a single process reports."""
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    if predictions is None or label_ids is None or isinstance(label_ids, tuple):
        return None
    logits, labels = torch.as_tensor(predictions).float(), torch.as_tensor(label_ids)
    if labels.is_floating_point() or logits.ndim != 2 or labels.shape != logits.shape[:1]:
        return None  # not single-label classification (regression, multi-label): keep the Trainer's loss
    labels = labels.long()
    keep = labels != -100
    if not keep.any() or int(labels[keep].max()) >= logits.shape[1] or int(labels[keep].min()) < 0:
        return None
    return float(F.cross_entropy(logits[keep], labels[keep]))


class MethodStack(nn.Module):
    """All methods of a recipe as one module, so DDP can wrap (and all-reduce) them together."""

    def __init__(self, methods: dict[str, TransferMethod]):
        super().__init__()
        self.methods = nn.ModuleDict(methods)

    def forward(self, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = batch.logits.new_zeros(())
        logs: dict[str, torch.Tensor | float] = {}
        for name, method in self.methods.items():
            out = method(batch)
            total = total + method.config.trade_off * out.loss
            logs[f"{name}/loss"] = out.loss.detach()
            for key, value in out.logs.items():
                logs[f"{name}/{key}"] = value
        return total, logs


class NonFiniteLossGuard:
    """Stops training at the first step whose loss is NaN or infinite, naming the step and the terms that went bad.

    On a CPU, checking costs nothing, so every step is checked and the error comes before that step's update. On an
    accelerator a per-step check would wait on the device each step, so the first bad step (and which terms were
    bad) is recorded on the device and read only at the next log and before each checkpoint: no checkpoint or
    exported model ever holds weights updated from a non-finite loss.
    """

    def __init__(self, *, check_every_step: bool, learning_rate: float):
        self.check_every_step = check_every_step
        self.learning_rate = learning_rate
        self._names: list[str] = []
        self._first_bad_step: torch.Tensor | None = None
        self._bad_terms: torch.Tensor | None = None

    def observe(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
        bad = ~torch.isfinite(values)
        if self.check_every_step:
            if bool(bad.any()):
                raise self.error(step, [n for n, b in zip(terms, bad.tolist()) if b], values)
            return
        if self._first_bad_step is None or list(terms) != self._names:
            self._names = list(terms)
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=values.device)
            self._bad_terms = torch.zeros_like(bad)
        first = (self._first_bad_step < 0) & bad.any()
        self._first_bad_step = torch.where(first, torch.full_like(self._first_bad_step, step), self._first_bad_step)
        self._bad_terms = torch.where(first, bad, self._bad_terms)

    def check(self) -> None:
        """Raise if a non-finite loss was recorded (the deferred path; a no-op when every step is checked)."""
        if self._first_bad_step is None:
            return
        step = int(self._first_bad_step)
        if step >= 0:
            raise self.error(step, [n for n, b in zip(self._names, self._bad_terms.tolist()) if b], None)

    def error(self, step: int, names: list[str], values: torch.Tensor | None) -> TrainingDivergedError:
        which = ", ".join(names) or "the loss"
        methods = sorted({n.split("/", 1)[0] for n in names if "/" in n})
        causes = [f"a learning rate too high for this model (learning_rate {self.learning_rate:g}: try 10x lower)"]
        if methods:
            causes.insert(0, f"too large a weight on {', '.join(methods)} (lower its trade_off)")
        causes += ["fp16 overflow (use bf16 or fp32)", "non-finite values in the data (e.g. a sample_weight column)"]
        return TrainingDivergedError(
            f"training stopped at step {step}: {which} became NaN or infinite. Likely causes: {'; '.join(causes)}. "
            "Checkpoints written before that step are intact: resume from one with --resume_from_checkpoint."
        )


class ZeroMethodGradients(TrainerCallback):
    """Clears the method parameters' gradients after every optimizer step.

    The Trainer clears gradients with ``model.zero_grad()``, which does not reach a discriminator that lives on the
    method stack: without this its gradients would add up over all past steps."""

    def __init__(self, module: nn.Module):
        self.module = module

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)


class GradualUnfreezing(TrainerCallback):
    """ULMFiT-style gradual unfreezing: the head first, then one more encoder layer from the top every
    ``every_steps`` optimizer steps. The optimizer holds every parameter from the start; frozen ones simply get no
    gradient (so AdamW leaves them untouched)."""

    def __init__(self, model: nn.Module, every_steps: int):
        self.model = model
        self.every_steps = every_steps
        self.num_layers = len(encoder_layers(model))
        self.current = -1

    def _apply(self, step: int) -> None:
        layers = min(step // self.every_steps, self.num_layers)
        if layers != self.current:
            set_trainable_top_layers(self.model, layers)
            self.current = layers

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)


class TransferTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with transfer objectives.

    Args:
        methods: ``{name: TransferMethod}`` built from the recipe; empty for plain supervised transfer.
        feature_module: the module whose input is the feature methods align
            (see :func:`hf_transfer.backbones.find_feature_module`); needed only when ``methods`` is not empty.
        layerwise_lr_decay: per-layer learning-rate factor (1.0 = off).
        extra_eval_metrics: ``(trainer) -> {name: value}``, called at every evaluation of the trainer's own eval
            sets (not when ``evaluate`` is given a dataset); the values are logged and returned as ``eval_<name>``,
            so ``metric_for_best_model: <name>`` can use them. Must return the same values on every process.
        task: the recipe's :class:`hf_transfer.tasks.Task`; its ``labelled_rows``, ``task_loss`` and ``method_rows``
            hooks say which rows carry labels, the supervised loss, and the rows the methods see. ``None``:
            single-label classification (the cross-entropy), one row per example.
        *args, **kwargs: as for ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args,
        methods: dict[str, TransferMethod] | None = None,
        feature_module: nn.Module | None = None,
        layerwise_lr_decay: float = 1.0,
        extra_eval_metrics: Callable[[Trainer], dict[str, float]] | None = None,
        task: Task | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # The recipe's task (hf_transfer.tasks): which rows are labelled, the task loss, and the rows methods see.
        # None: the base Task's hooks, single-label classification with one row per example.
        self.task = task if task is not None else Task()
        # Our loss is a per-batch mean: let the Trainer divide it for gradient accumulation as usual.
        self.model_accepts_loss_kwargs = False
        self.method_stack = MethodStack(methods or {}).to(self.args.device)
        self._method_runner: nn.Module = self.method_stack
        self.layerwise_lr_decay = layerwise_lr_decay
        # The model too: on a decoder-only classifier its input_ids say which token the head classifies.
        self._tap = FeatureTap(feature_module, model=self.model) if methods else None
        # Batch keys the methods read themselves (StepBatch.extras); the model's forward must not receive them.
        self._method_batch_keys = sorted({key for m in self.method_stack.methods.values() for key in m.batch_keys})
        self._log_sums: dict[str, float] = defaultdict(float)
        self._log_counts: dict[str, int] = defaultdict(int)
        self.extra_eval_metrics = extra_eval_metrics
        # Method parameters (a discriminator) train with the model. Under FSDP and DeepSpeed they must be part of
        # the module the engine prepares: both map every optimizer parameter to (a shard of) that module, and
        # refuse one it does not hold. So the stack becomes a submodule of the model: the engine shards it, the
        # Trainer's one optimizer holds it, the engine's checkpoints carry it, and run.export leaves it out. With
        # one process or DDP it stays apart, with its own parameter group and (DDP) its own wrapper: transformers
        # wraps DDP with find_unused_parameters, which would count the discriminator (used after the model's
        # forward) as unused and then fail when its gradients arrive.
        self.methods_in_model = False
        if any(True for _ in self.method_stack.parameters()):
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                self.model.add_module(METHODS_SUBMODULE, self.method_stack)
                self.methods_in_model = True
            else:
                self.add_callback(ZeroMethodGradients(self.method_stack))
        self.loss_guard = NonFiniteLossGuard(
            check_every_step=self.args.device.type == "cpu", learning_rate=self.args.learning_rate
        )

    # ---- optimisation ----------------------------------------------------------------------------------------

    def layerwise_groups(self, model: nn.Module) -> Callable[..., list[dict[str, Any]]]:
        """The function that splits ``model``'s parameters into layer-wise learning-rate groups
        (:func:`hf_transfer.backbones.layerwise_lr_groups`: a classifier's backbone found by its prefix); a trainer
        of another kind of model (multi-task) returns its own."""
        return layerwise_lr_groups

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None and self.layerwise_lr_decay < 1.0:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            decay_names = set(self.get_decay_parameter_names(opt_model))
            no_decay = {n for n, _ in opt_model.named_parameters() if n not in decay_names}
            groups = self.layerwise_groups(opt_model)(
                opt_model,
                learning_rate=self.args.learning_rate,
                decay=self.layerwise_lr_decay,
                weight_decay=self.args.weight_decay,
                no_decay=no_decay,
            )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        optimizer = super().create_optimizer(model)
        # (Inside the model, the Trainer's own groups already hold them.)
        method_params = [] if self.methods_in_model else [p for p in self.method_stack.parameters() if p.requires_grad]
        if method_params and not any(
            any(p is q for q in method_params) for g in optimizer.param_groups for p in g["params"]
        ):
            optimizer.add_param_group(
                {"params": method_params, "lr": self.args.learning_rate, "weight_decay": self.args.weight_decay}
            )
            if self.accelerator.num_processes > 1:
                # One DDP wrapper for all method parameters: their gradients are all-reduced like the model's.
                self._method_runner = self.accelerator.prepare_model(self.method_stack)
        return optimizer

    # ---- loss ------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels", None)
        domain = inputs.pop("domain", None)
        weights = inputs.pop("sample_weight", None)
        extras = {key: inputs.pop(key) for key in self._method_batch_keys if key in inputs}
        outputs = model(**inputs)
        if labels is None:
            raise ValueError("TransferTrainer.compute_loss needs `labels` in the batch")
        # A method's collator may append rows after the batch's own (mlm's masked copies): the model ran on them, but
        # only that method reads their outputs (through its own hook); the losses here cover the first len(labels).
        rows = labels.shape[0]
        logits = outputs.logits[:rows]
        if domain is None:  # one domain per row (a multi-label row's labels are a vector)
            domain = torch.zeros(rows, dtype=torch.long, device=labels.device)
        # Target rows and unlabelled rows weigh 0 in the task loss. Weighting rather than selecting the source rows
        # (logits[domain == 0]) keeps the step free of host reads: a boolean-mask select waits on the device.
        task = self.task
        labelled = (domain == 0) & task.labelled_rows(labels)
        row_weight = labelled.to(torch.float32) if weights is None else weights.float() * labelled
        # Several processes: the task loss and every method's loss are those of the global batch (see
        # hf_transfer.distributed), so N processes train like one with the same global batch.
        global_batch = model.training and self.accelerator.num_processes > 1
        task_loss = task.task_loss(logits, labels, labelled, row_weight, global_batch=global_batch)
        loss = task_loss
        terms = {"task_loss": task_loss}
        if model.training and self._tap is not None:
            features = self._tap.pop()[:rows]
            # A sequence task's rows are its examples; a token task makes its tokens the rows (own domain, weight).
            rows_of = task.method_rows(logits=logits, features=features, labels=labels, domain=domain,
                                       sample_weight=weights, inputs=inputs)
            logits, features, labels, domain, weights = (rows_of.logits, rows_of.features, rows_of.labels,
                                                         rows_of.domain, rows_of.sample_weight)
            step_inputs = {k: v[:rows] for k, v in inputs.items() if torch.is_tensor(v) and v.dim() > 0}
            loss = loss + self.method_loss(logits, features, labels, domain, weights, step_inputs, extras, terms)
        if model.training:
            self._accumulate("task_loss", task_loss.detach())
            terms["total loss"] = loss
            self.loss_guard.observe(self.state.global_step + 1, terms)
        return (loss, outputs) if return_outputs else loss

    def method_loss(self, logits, features, labels, domain, sample_weight, inputs, extras, terms) -> torch.Tensor:
        """The method stack's loss on a training batch's rows (a :class:`StepBatch`, gathered over the processes so
        that every method sees the global batch), its scalars logged and its ``*/loss`` terms added to ``terms``
        (what the non-finite check watches). Subclasses with another forward pass (multi-task) call it too."""
        batch = StepBatch(
            logits=logits,
            features=features,
            labels=labels,
            domain=domain,
            sample_weight=sample_weight,
            progress=self._progress(),
            inputs=inputs,
            extras=extras,
        )
        if self.accelerator.num_processes > 1:
            batch = gather_step_batch(batch)
        aux_loss, logs = self._method_runner(batch)
        for key, value in logs.items():
            self._accumulate(key, value)
        terms.update({k: v for k, v in logs.items() if k.endswith("/loss")})
        return aux_loss

    def _progress(self) -> float:
        max_steps = self.state.max_steps or 0
        return min(1.0, self.state.global_step / max_steps) if max_steps > 0 else 0.0

    # ---- logging ---------------------------------------------------------------------------------------------

    def _accumulate(self, key: str, value) -> None:
        # Tensors are summed as tensors: no host sync per step; they are read once per logging step.
        self._log_sums[key] = self._log_sums[key] + (value.detach() if torch.is_tensor(value) else float(value))
        self._log_counts[key] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.loss_guard.check()
        if "loss" in logs and self._log_counts:
            for key, total in self._log_sums.items():
                mean = total / max(self._log_counts[key], 1)
                if torch.is_tensor(mean):
                    mean = self.accelerator.reduce(mean.to(self.args.device), reduction="mean").item()
                logs[key] = round(float(mean), 6)
            self._log_sums.clear()
            self._log_counts.clear()
        super().log(logs, start_time)

    # ---- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.extra_eval_metrics is not None and eval_dataset is None:
            extra = {f"{metric_key_prefix}_{k}": float(v) for k, v in self.extra_eval_metrics(self).items()}
            if extra:
                self.log(extra)
                metrics.update(extra)
                # A second on_evaluate, with these metrics only, lets EarlyStoppingCallback watch them.
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, extra)
        return metrics

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        key = f"{metric_key_prefix}_loss"
        if key in output.metrics:
            exact = exact_eval_loss(output.predictions, output.label_ids)
            if exact is not None:
                output.metrics[key] = exact
        return output

    # ---- checkpoints: method state travels with the optimizer state ------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        self.loss_guard.check()
        super()._save_checkpoint(model, trial)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.methods_in_model:  # the engine's own checkpoint of the model holds the method state (sharded)
            return
        state = self.method_stack.state_dict()
        if state and self.args.should_save:
            tmp = os.path.join(output_dir, METHOD_STATE_FILE + ".tmp")
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
            os.replace(tmp, os.path.join(output_dir, METHOD_STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.methods_in_model or not len(self.method_stack.state_dict()):
            return
        path = os.path.join(checkpoint, METHOD_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"resume_from_checkpoint: {checkpoint!r} has no {METHOD_STATE_FILE}")
        self.method_stack.load_state_dict(load_file(path, device=str(self.args.device)))
