"""Losses over the *global* batch under data parallelism, so that N processes train exactly like one.

With ``accelerate launch`` each process sees ``1/N`` of every step's rows and DDP averages the gradients of the
per-process losses. That equals the one-process gradient only for a loss that is a plain mean over equally many
rows on every process. It is not for:

* batch statistics: MMD, CORAL and MCC compare or decorrelate the *batch's* features, and a 4-vs-4 estimate
  averaged over two processes is not the 8-vs-8 estimate;
* normalised weights: the instance-weighted loss ``sum(w * ce) / sum(w)`` and DANN's per-domain balancing divide
  by a batch total;
* uneven shards (the last batch of an epoch).

:func:`gather_step_batch` all-gathers a step's features, logits, labels, domains and weights with a
differentiable all-gather, so every process computes the same loss over the global batch. Why the gradients come
out right: the all-gather's backward *sums* each row's gradient over the processes (each computed the same loss,
so each row gets ``N`` times its gradient), and DDP then *averages* over the processes, which divides the ``N``
back out. :func:`global_mean_scale` does the same for the task loss without gathering anything.

With one process (or no process group) every function here returns its input unchanged.

Also here: :func:`full_state_dict` and :func:`parameters_sharded`, what the export needs to know of an engine that
shards the model (FSDP, DeepSpeed ZeRO-3) and so holds no whole copy on any one process.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes in the default process group (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    local = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in sizes]


def gather_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every process's ``tensor`` along dim 0 (in rank order), keeping the autograd graph.

    ``sizes`` are the processes' row counts (from one all-gather per step); shards shorter than the longest are
    padded for the collective and the padding cut off again, so no row is duplicated or dropped.
    """
    longest = max(sizes)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(tensor))
    else:
        parts = [torch.empty_like(tensor) for _ in sizes]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def gather_step_batch(batch):
    """The global batch of this step, identical on every process, with gradients flowing back to each shard."""
    if world_size() == 1:
        return batch
    sizes = _gather_sizes(batch.logits.shape[0], batch.logits.device)
    return dataclasses.replace(
        batch,
        logits=gather_rows(batch.logits, sizes),
        features=gather_rows(batch.features, sizes),
        labels=gather_rows(batch.labels, sizes),
        domain=gather_rows(batch.domain, sizes),
        sample_weight=None if batch.sample_weight is None else gather_rows(batch.sample_weight, sizes),
        # progress, inputs and extras stay as they are: per process (a method that runs a model on `inputs` gathers
        # its result with gather_batch_rows)
    )


def gather_batch_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``tensor`` concatenated in rank order, the order of :func:`gather_step_batch`: for a
    per-row tensor a method computes from ``StepBatch.inputs`` (this process's rows) to line up with the global
    batch. Differentiable; the identity with one process."""
    if world_size() == 1:
        return tensor
    return gather_rows(tensor, _gather_sizes(tensor.shape[0], tensor.device))


def global_mean_scale(local_total: torch.Tensor) -> torch.Tensor:
    """``N / (sum of local_total over processes)``: multiply a process's *sum* of per-row losses by it to get the
    share of the global mean whose DDP average is that mean, whatever the shard sizes.

    ``local_total`` is the local count of rows (or sum of row weights); it carries no gradient.
    """
    total = local_total.detach().clone().float()
    n = world_size()
    if n > 1:
        dist.all_reduce(total)
    return n / total.clamp_min(1e-12)


# ---- exporting from an engine that holds the model -------------------------------------------------------------


def full_state_dict(trainer) -> dict[str, torch.Tensor] | None:
    """The trained model's whole state dict, gathered by Accelerate when an engine holds it (FSDP, DeepSpeed), or
    ``None`` when the unwrapped model holds it whole and ``save_pretrained`` can read it (one process, DDP).

    A collective under FSDP and ZeRO-3: every process must call it. Without it FSDP2's main process would save its
    own shards (``save_pretrained`` fails: "Attempted to access the data pointer on an invalid python storage"),
    and ZeRO-3's would save empty partitions."""
    if trainer.is_fsdp_enabled:
        return trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return None


def parameters_sharded(trainer) -> bool:
    """Whether each process holds only a shard of the parameters (FSDP, DeepSpeed ZeRO-3): then no process has a
    whole model to copy (a merged adapter, say) outside the engine."""
    if trainer.is_fsdp_enabled:
        return True
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def launched_engine() -> str | None:
    """``FSDP`` or ``DEEPSPEED`` when this process was started by ``accelerate launch`` with such a config."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "DEEPSPEED"
    return None
