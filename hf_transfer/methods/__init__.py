"""Transfer objectives, one module each, registered by name (see :mod:`hf_transfer.methods.base`)."""

from . import finetune  # noqa: F401  (registers "finetune")
from .adabn import AdaBNConfig  # noqa: F401  (registers "adabn")
from .base import MethodConfig, MethodOutput, StepBatch, TransferMethod
from .bss import BSS, BSSConfig  # noqa: F401  (registers "bss")
from .cdan import CDAN, CDANConfig  # noqa: F401  (registers "cdan")
from .coral import CORAL, CORALConfig  # noqa: F401  (registers "coral")
from .dann import DANN, DANNConfig  # noqa: F401  (registers "dann")
from .dsbn import DSBNConfig  # noqa: F401  (registers "dsbn")
from .entropy import Entropy, EntropyConfig  # noqa: F401  (registers "entropy")
from .graph_laplacian import GraphLaplacian, GraphLaplacianConfig  # noqa: F401  (registers "graph_laplacian")
from .instance_weighting import InstanceWeightingConfig  # noqa: F401  (registers "instance_weighting")
from .l2sp import L2SP, L2SPConfig  # noqa: F401  (registers "l2sp")
from .label_relation import LabelRelationConfig  # noqa: F401  (registers "label_relation")
from .lwf import LwF, LwFConfig  # noqa: F401  (registers "lwf")
from .mcc import MCC, MCCConfig  # noqa: F401  (registers "mcc")
from .mlm import MLM, MLMConfig  # noqa: F401  (registers "mlm")
from .mmd import MMD, MMDConfig  # noqa: F401  (registers "mmd")
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
