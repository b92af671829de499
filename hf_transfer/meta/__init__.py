"""Meta-learning: learn from many small tasks so that a new task is learned from a few labelled rows.

* :mod:`~hf_transfer.meta.episodes`: N-way K-shot episodes with query sets over tasks, seeded and reproducible;
* :mod:`~hf_transfer.meta.protonet`: prototypical networks (Euclidean or cosine) on any HF encoder, full or LoRA;
* :mod:`~hf_transfer.meta.maml`: first-order MAML and Reptile over the encoder, its LoRA parameters or a head;
* :mod:`~hf_transfer.meta.hypernet`: a task-conditioned head generated from the support set;
* :mod:`~hf_transfer.meta.contrastive`: contrastive-pair adaptation (SetFit's objective) and a logistic-regression
  head, exported as a SetFit folder by :mod:`~hf_transfer.meta.setfit_export`;
* :mod:`~hf_transfer.meta.evaluation`: few-shot accuracy, mean and 95% interval over episodes;
* :func:`train_meta`: a recipe with ``meta_method`` in, a meta-trained encoder out (docs/meta_lifelong.md).
"""

from ..families import FamilySpec, register_family
from .contrastive import ContrastiveClassifier, contrastive_adapt, contrastive_pairs
from .episodes import Episode, EpisodeSampler, label_subset_tasks
from .evaluation import FewShotResult, RowPool, evaluate_few_shot, mean_confidence_interval
from .hypernet import HyperHead
from .learner import ADAPT_METHODS, META_METHODS, EpisodicLearner, LearnerConfig
from .maml import episode_head, fomaml_gradients, reptile_gradients, sgd_steps
from .protonet import Embedder, pool, protonet_loss, prototype_logits, prototypes
from .recipe import MetaArguments, MetaRecipe, load_meta_recipe
from .trainer import load_meta_learner, train_meta

register_family(FamilySpec(
    "meta", selected_by="meta_method", load_recipe=load_meta_recipe, train=train_meta, config_class=MetaArguments,
    priority=10, doc="docs/meta_lifelong.md",
    summary="Meta-learning over many small tasks for few-shot use (`meta_method:` with `tasks:` / `test_tasks:`)",
))

__all__ = [
    "ADAPT_METHODS",
    "ContrastiveClassifier",
    "META_METHODS",
    "Embedder",
    "Episode",
    "EpisodeSampler",
    "EpisodicLearner",
    "FewShotResult",
    "HyperHead",
    "LearnerConfig",
    "MetaArguments",
    "MetaRecipe",
    "RowPool",
    "contrastive_adapt",
    "contrastive_pairs",
    "episode_head",
    "evaluate_few_shot",
    "fomaml_gradients",
    "label_subset_tasks",
    "load_meta_learner",
    "mean_confidence_interval",
    "pool",
    "prototype_logits",
    "prototypes",
    "protonet_loss",
    "reptile_gradients",
    "sgd_steps",
    "train_meta",
]
