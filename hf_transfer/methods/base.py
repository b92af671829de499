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
    """

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    domain: torch.Tensor
    sample_weight: torch.Tensor | None = None
    progress: float = 0.0

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
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    needs_target: ClassVar[bool] = False
    #: name under which the method is registered; set by ``register_method``.
    name: ClassVar[str] = ""

    def __init__(self, config: MethodConfig, *, feature_dim: int, num_labels: int):
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.num_labels = num_labels

    def forward(self, batch: StepBatch) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError
