"""Lifelong (continual) learning: tasks learned one after another without forgetting the earlier ones.

* :mod:`~hf_transfer.lifelong.metrics`: accuracy matrix, average accuracy, forgetting, backward transfer, plot;
* :mod:`~hf_transfer.lifelong.regularizers`: online EWC (Fisher diagonal) and L2-SP;
* :mod:`~hf_transfer.lifelong.replay`: a small balanced replay buffer;
* :func:`train_lifelong`: a recipe with ``lifelong_method`` in (naive, adapter, ewc, l2sp, replay), the final model
  and its accuracy matrix out (docs/meta_lifelong.md).
"""

from ..families import FamilySpec, register_family
from .metrics import average_accuracy, backward_transfer, forgetting, plot_accuracy_matrix, summarize
from .recipe import LIFELONG_METHODS, LifelongArguments, LifelongRecipe, load_lifelong_recipe
from .regularizers import EWC, L2SP, fisher_diagonal
from .replay import ReplayBuffer
from .trainer import train_lifelong

register_family(FamilySpec(
    "lifelong", selected_by="lifelong_method", load_recipe=load_lifelong_recipe, train=train_lifelong,
    config_class=LifelongArguments, priority=10, doc="docs/meta_lifelong.md",
    summary="Tasks learned one after another without forgetting (`lifelong_method:` with a `tasks:` list)",
))

__all__ = [
    "EWC",
    "L2SP",
    "LIFELONG_METHODS",
    "LifelongArguments",
    "LifelongRecipe",
    "ReplayBuffer",
    "average_accuracy",
    "backward_transfer",
    "fisher_diagonal",
    "forgetting",
    "plot_accuracy_matrix",
    "summarize",
    "train_lifelong",
]
