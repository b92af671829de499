"""Transfer objectives, one module each, registered by name (see :mod:`hf_transfer.methods.base`)."""

from . import finetune  # noqa: F401  (registers "finetune")
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .registry import MethodSpec, available_methods, get_method_spec, register_method

__all__ = [
    "MethodConfig",
    "MethodOutput",
    "MethodSpec",
    "StepBatch",
    "TransferMethod",
    "available_methods",
    "get_method_spec",
    "register_method",
]
