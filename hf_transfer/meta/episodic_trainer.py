"""``EpisodicTrainer``: meta-training on the ``transformers.Trainer``, so a meta-learning run logs (``report_to``,
``logging_steps``, ``trainer_state.json``), checkpoints (``save_steps``), resumes (``resume_from_checkpoint``) and
exports like every other run.

One optimizer step is one outer step of meta-learning:

* the training set is :class:`EpisodeSteps`: item ``j`` holds the ``E = episodes_per_device`` episodes numbered
  ``j * E ...``; read in order with one item a batch, Accelerate hands process ``r`` of ``W`` the items
  ``step * W + r``, which are exactly :meth:`~hf_transfer.meta.episodes.EpisodeSampler.for_process` ``(step, r, W,
  E)``. Episodes are pure functions of ``(seed, number)``, so a resumed run (the Trainer skips the batches already
  trained) continues with the same episodes;
* :meth:`EpisodicTrainer.training_step` runs the learner's ``meta_step`` on each episode (the inner loops of FOMAML
  and Reptile compute their own gradients, so there is no single loss to backpropagate), sums the meta-gradients,
  all-reduces them once over the processes and writes their mean into ``.grad``; the Trainer then clips
  (``max_grad_norm``; never for Reptile, whose "gradient" is a parameter difference), steps the optimizer and the
  scheduler, logs and saves;
* the optimizer is AdamW over the learner's trainable parameters (``learning_rate``, ``weight_decay``,
  ``adam_beta1/2``, ``adam_epsilon``), or plain SGD for Reptile (its outer update ``theta += eps * (phi - theta)``
  is SGD on the parameter difference with learning rate ``eps``);
* checkpoints hold the learner's whole state dict (encoder, LoRA weights, hypernetwork head) in ``model.safetensors``
  beside the Trainer's optimizer, scheduler, RNG and trainer state, and the running sum of the step losses
  (:class:`EpisodeLossTally`, in ``trainer_state.json``), so ``train_loss`` covers the whole run after a resume.

The learner is never wrapped in DDP: the inner loops change the weights in place between forward passes and call
the embedder directly, so DDP's reducer would see no forward of its own and could not average anything; the one
explicit all-reduce a step is what it would do. Accelerate still places the model and registers it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from .episodes import EpisodeSampler
from .evaluation import RowPool


class EpisodeSteps(Dataset):
    """The episodes of a run, one item per (step, process) slot: item ``j`` is the ``per_process`` episodes numbered
    ``j * per_process ...`` with their support and query rows padded into batches.

    Args:
        sampler: the seeded episode sampler over the meta-training tasks.
        pools: per task, its tokenised rows (on the CPU; the Trainer moves each batch to the device).
        steps: outer steps of the run.
        num_processes: processes of the run (items ``steps * num_processes`` in all).
        per_process: episodes each process trains on a step.
    """

    def __init__(self, sampler: EpisodeSampler, pools: list[RowPool], *, steps: int, num_processes: int,
                 per_process: int):
        self.sampler, self.pools = sampler, pools
        self.steps, self.num_processes, self.per_process = steps, num_processes, per_process

    def __len__(self) -> int:
        return self.steps * self.num_processes

    def __getitem__(self, slot: int) -> dict[str, Any]:
        episodes = []
        for ep in self.sampler.take(self.per_process, start=int(slot) * self.per_process):
            pool = self.pools[ep.task]
            episodes.append({"support": pool.batch(ep.support), "support_labels": torch.as_tensor(ep.support_labels),
                             "query": pool.batch(ep.query), "query_labels": torch.as_tensor(ep.query_labels),
                             "n_way": ep.n_way})
        return {"slot": int(slot), "episodes": episodes}


def one_slot(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The collator: a batch is one slot (the batch size is 1), passed on as it is."""
    if len(items) != 1:
        raise ValueError(f"meta-learning reads one step's episodes a batch, got {len(items)} items")
    return items[0]


class EpisodeLossTally(TrainerCallback, ExportableState):
    """The sum of the step losses (each the mean over the step's episodes on every process) and the step count, kept
    in ``trainer_state.json`` so that ``train_loss`` is the mean over the whole run, resumed or not."""

    def __init__(self, total: float = 0.0, steps: int = 0):
        self.total, self.steps = float(total), int(steps)

    def add(self, loss: float) -> None:
        self.total += loss
        self.steps += 1

    @property
    def mean(self) -> float:
        return self.total / self.steps if self.steps else float("nan")

    def state(self) -> dict[str, Any]:
        return {"args": {"total": self.total, "steps": self.steps}, "attributes": {}}


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class EpisodicTrainer(Trainer):
    """The Trainer with one outer step of meta-learning as its training step (see the module docstring).

    Args:
        model: the :class:`~hf_transfer.meta.learner.EpisodicLearner`.
        train_dataset: the run's :class:`EpisodeSteps`.
        **kwargs: the Trainer's (``args``, ``processing_class``, ``callbacks`` ...).
    """

    def __init__(self, *, model, train_dataset: EpisodeSteps, callbacks: list | None = None, **kwargs: Any):
        # The Trainer seeds the RNGs again when it is built, and its data loader draws a seed when it starts: put the
        # torch RNG back where the run had it once the learner was built before the first step of a fresh run, so
        # that dropout draws the same masks as the Accelerate loop this trainer replaced did for the same seed.
        self._start_rng: dict[str, Any] | None = _rng_state()
        super().__init__(model=model, train_dataset=train_dataset, data_collator=one_slot,
                         callbacks=[*(callbacks or []), EpisodeLossTally()], **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            from ..errors import UserError

            raise UserError("meta-learning runs on plain data parallelism: its inner loops change every weight in "
                            "place, which DeepSpeed and FSDP shard; launch without a DeepSpeed or FSDP config")

    # ---- setup -----------------------------------------------------------------------------------------------

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        # Accelerate wraps a trainable model in DDP when several processes run. The learner must not be wrapped (see
        # the module docstring): prepare it as Accelerate prepares a model for evaluation (device placement, no
        # distributed wrapper); training_step all-reduces the meta-gradients itself.
        prepare_model = self.accelerator.prepare_model

        def prepare_without_ddp(model, device_placement=None, evaluation_mode=False):
            return prepare_model(model, device_placement=device_placement, evaluation_mode=True)

        self.accelerator.prepare_model = prepare_without_ddp

    def _get_train_sampler(self, train_dataset=None):
        # In order: item j is the slot of step j // W on process j % W (Accelerate deals batches round-robin).
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            args = self.args
            params = self.model.meta_parameters()
            if self.model.config.meta_method == "reptile":
                self.optimizer = torch.optim.SGD(params, lr=args.learning_rate)
            else:
                self.optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay,
                                                   betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        return self.optimizer

    def _clip_grad_norm(self, model):
        if self.model.config.meta_method == "reptile":
            return None  # a parameter difference, not a gradient: never clipped (the Trainer still logs its norm)
        return super()._clip_grad_norm(model)

    @property
    def loss_tally(self) -> EpisodeLossTally:
        # Looked up each time: a resume may replace the callback object with one rebuilt from the checkpoint.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, EpisodeLossTally))

    def _load_callback_state(self) -> None:
        # The tally is the run's own state, restored whatever restore_callback_states_from_checkpoint says (that
        # setting is about the user's callbacks).
        saved = self.state.stateful_callbacks.get(EpisodeLossTally.__name__)
        if isinstance(saved, dict) and not self.args.restore_callback_states_from_checkpoint:
            tally = self.loss_tally
            tally.total, tally.steps = float(saved["args"]["total"]), int(saved["args"]["steps"])
        super()._load_callback_state()

    # ---- one outer step --------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        raise NotImplementedError("meta-learning has no single loss to backpropagate; EpisodicTrainer.training_step "
                                  "computes each episode's meta-gradient with the learner's meta_step")

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Every episode's meta-gradient (``meta_step``), averaged over the step's episodes on all processes into
        ``.grad``; returns the step's loss (the mean episode loss over all processes), detached."""
        if self._start_rng is not None:
            if self.state.global_step == 0:  # a fresh run (a resumed one takes the checkpoint's RNG state)
                _set_rng_state(self._start_rng)
            self._start_rng = None
        learner = self.model
        learner.train()
        inputs = self._prepare_inputs(inputs)
        world, rank = self.args.world_size, self.args.process_index
        expected = self.state.global_step * world + rank
        if inputs["slot"] != expected:  # the data loader must deal slots round-robin, in order
            raise RuntimeError(f"meta-training: process {rank} got the episodes of slot {inputs['slot']} at step "
                               f"{self.state.global_step}, expected slot {expected}")
        params = learner.meta_parameters()
        grads, losses = None, []
        for ep in inputs["episodes"]:
            learner.zero_grad(set_to_none=True)
            losses.append(learner.meta_step(ep["support"], ep["support_labels"], ep["query"], ep["query_labels"],
                                            ep["n_way"]))
            step_grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
            grads = step_grads if grads is None else [a + b for a, b in zip(grads, step_grads)]
        loss = torch.tensor(float(np.mean(losses)), dtype=torch.float64)
        if world > 1:  # DDP's all-reduce, once a step (the learner is not wrapped: see the module docstring)
            for g in grads:
                torch.distributed.all_reduce(g, op=torch.distributed.ReduceOp.SUM)
            loss = loss.to(self.args.device)
            torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.SUM)
        for p, g in zip(params, grads):
            p.grad = g / (world * len(inputs["episodes"]))
        step_loss = float(loss) / world
        self.loss_tally.add(step_loss)
        return torch.tensor(step_loss, device=self.args.device)
