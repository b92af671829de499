"""Multi-task learning: one shared encoder, one head per task, hard or soft parameter sharing.

* :class:`MultiTaskModel` / :class:`MultiTaskConfig`: the model (registered with ``AutoConfig`` / ``AutoModel`` on
  import), with ``hard``, ``soft_lora``, ``soft_l2`` and ``shared_private`` sharing;
* :mod:`~hf_transfer.multitask.sampling`: one task per batch, proportional / temperature / round-robin schedules that
  every process computes identically;
* :mod:`~hf_transfer.multitask.losses`: uncertainty weighting, the L2 tie, the orthogonality penalty, a task
  discriminator;
* a recipe with a ``tasks:`` list trains through ``hf-transfer train`` / ``hf_transfer.train``
  (:func:`hf_transfer.multitask.run.train_multitask`); see docs/multitask.md.
"""

from ..families import FamilySpec, register_family
from .losses import TaskDiscriminator, UncertaintyWeighting, l2_tie_penalty, orthogonality_penalty
from .modeling import SHARING_MODES, MultiTaskConfig, MultiTaskModel, MultiTaskOutput, register_auto_classes
from .recipe import MultiTaskArguments, load_multitask_recipe
from .sampling import SAMPLING_STRATEGIES, TaskBatchSampler, task_probabilities, task_schedule

register_auto_classes()


def _train(recipe, *, callbacks=None):
    from .run import train_multitask  # the training stack loads only when a multi-task recipe runs

    return train_multitask(recipe, callbacks=callbacks)


register_family(FamilySpec(
    "multitask", selected_by="tasks", load_recipe=load_multitask_recipe, train=_train,
    config_class=MultiTaskArguments, doc="docs/multitask.md",
    summary="Several labelled tasks trained together with shared parameters (`sharing:` and a `tasks:` list)",
))

__all__ = [
    "SAMPLING_STRATEGIES",
    "SHARING_MODES",
    "MultiTaskConfig",
    "MultiTaskModel",
    "MultiTaskOutput",
    "TaskBatchSampler",
    "TaskDiscriminator",
    "UncertaintyWeighting",
    "l2_tie_penalty",
    "orthogonality_penalty",
    "task_probabilities",
    "task_schedule",
]
