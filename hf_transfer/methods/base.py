"""The contract every transfer objective follows.

A *method* is a training-time loss (DESIGN.md principle 2). The trainer computes the supervised task loss on the
labelled source rows itself; each method listed in the recipe adds one auxiliary term, weighted by its
``trade_off``. A method never changes the exported model: any parameters it owns (a domain discriminator, say)
live on the method module, are optimised with the model, saved in checkpoints and dropped at export.

Adding a method is one module with a config dataclass and a :class:`TransferMethod` subclass, joined by one
:func:`hf_transfer.methods.register_method` call; neither the trainer nor any other method changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class MethodConfig:
    """Fields every method accepts. Subclass it to add a method's own fields (each with ``metadata={"help": ...}``)."""

    trade_off: float = field(default=1.0, metadata={"help": "Weight of this method's loss in the total loss."})


@dataclass
class StepBatch:
    """What a method sees at each training step.

    Rows are the source rows followed by the target rows of one paired batch (``domain`` says which is which).

    Attributes:
        logits: ``(B, C)`` classifier outputs for every row.
        features: ``(B, D)`` the representation the classifier head receives (the aligned feature space).
        labels: ``(B,)`` class ids for source rows, ``-100`` for target rows (target labels never get here).
        domain: ``(B,)`` 0 for source rows, 1 for target rows.
        sample_weight: ``(B,)`` per-row weights for the source rows (1 where none were given), or ``None``.
        progress: fraction of training done, in ``[0, 1]`` (drives schedules such as DANN's lambda).
        inputs: the model inputs (``input_ids``, ``attention_mask`` ...) of *this process's* rows, before any
            gathering: what a method needs to run another model on the same rows (LwF's frozen reference).
        extras: the batch keys the recipe's methods declared in :attr:`TransferMethod.batch_keys`, taken out of the
            collated batch before the model's forward (the model never sees them); this process's only.

    Under several processes ``logits``, ``features``, ``labels``, ``domain`` and ``sample_weight`` are the global
    batch (:func:`hf_transfer.distributed.gather_step_batch`); ``inputs`` and ``extras`` stay per process.
    """

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    domain: torch.Tensor
    sample_weight: torch.Tensor | None = None
    progress: float = 0.0
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def source_mask(self) -> torch.Tensor:
        return self.domain == 0

    @property
    def target_mask(self) -> torch.Tensor:
        return self.domain == 1


@dataclass
class MethodOutput:
    """An auxiliary loss (before ``trade_off``) and the scalars to log under the method's name.

    Log values may be floats or detached 0-dim tensors; prefer tensors: the trainer sums them on the device and
    reads them (averaged over steps and processes) only at logging steps, so no step waits on a host sync.
    """

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


class TransferMethod(nn.Module):
    """Base class of a registered transfer objective.

    Subclasses set ``config_class``, say whether they need unlabelled target rows (``needs_target``) and implement
    :meth:`forward`. Constructors are keyword-only: ``(config, *, feature_dim, num_labels)``.

    A method that needs more than the step's logits and features gets it without the trainer knowing the method:

    * the model, a frozen copy of its pretrained weights, the collator: from its registered ``prepare`` hook, which
      runs once after the model loads and before training (and before a resumed run loads its checkpoint, so a
      copy taken there is the pretrained model again) with ``context["methods"]`` holding the built methods;
      :mod:`hf_transfer.methods._pretrained` has the helpers (a frozen copy kept out of the module tree, so it is
      never saved, optimised or exported);
    * extra inputs of a batch: the hook may wrap ``context["collator"]`` to add keys, which the method names in
      ``batch_keys`` and reads from ``StepBatch.extras``. Such a collator may also append rows after the batch's own
      (mlm's masked copies of the target rows): the model runs on all rows, the task loss and every method's
      ``StepBatch`` cover the first ``len(labels)`` rows only.
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    needs_target: ClassVar[bool] = False
    #: keys of the collated batch this method reads (from ``StepBatch.extras``); the model never receives them.
    batch_keys: ClassVar[tuple[str, ...]] = ()
    #: name under which the method is registered; set by ``register_method``.
    name: ClassVar[str] = ""

    def __init__(self, config: MethodConfig, *, feature_dim: int, num_labels: int):
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.num_labels = num_labels

    def forward(self, batch: StepBatch) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError
