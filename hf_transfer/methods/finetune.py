"""``method: finetune`` — supervised training on the labelled source data, nothing more.

The trainer already computes the (optionally instance-weighted) cross-entropy on source rows, so this method adds
no loss. Model-based transfer choices (full, linear probe, top layers, gradual unfreezing, layer-wise learning-rate
decay, PEFT) are model fields of the recipe and combine with every method.
"""

from dataclasses import dataclass

from .base import MethodConfig
from .registry import register_method


@dataclass
class FinetuneConfig(MethodConfig):
    """``finetune`` has no fields of its own; ``trade_off`` is unused."""


register_method("finetune", FinetuneConfig)
