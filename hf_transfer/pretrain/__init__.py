"""Pre-training: continued masked-language-model training on unlabelled domain text (DAPT / TAPT), whose output
folder a task recipe names as ``model_name_or_path``.

* :mod:`~hf_transfer.pretrain.recipe`: a recipe with ``train_data`` (:class:`PretrainArguments`);
* :mod:`~hf_transfer.pretrain.data`: plain text lines, CoNLL sentences, tables and Hub datasets; held-out text
  masked once for a comparable perplexity;
* :func:`train_pretrain`: a Trainer on ``AutoModelForMaskedLM`` (full or LoRA, merged at export), a plain
  masked-LM folder out (recipes/pretrain/README.md).
"""

from ..families import FamilySpec, register_family
from .data import PretrainCollator, looks_like_conll, mask_once, read_texts, tokenize_texts
from .recipe import PretrainArguments, PretrainRecipe, load_pretrain_recipe
from .trainer import MaskedLMTrainer, head_module_names, load_masked_lm, train_pretrain

register_family(FamilySpec(
    "pretrain", selected_by="train_data", load_recipe=load_pretrain_recipe, train=train_pretrain,
    config_class=PretrainArguments, priority=5, doc="recipes/pretrain/README.md",
    summary="Continued masked-LM training on unlabelled domain text (`train_data:`), a base for task recipes",
))

__all__ = [
    "MaskedLMTrainer",
    "PretrainArguments",
    "PretrainCollator",
    "PretrainRecipe",
    "head_module_names",
    "load_masked_lm",
    "load_pretrain_recipe",
    "looks_like_conll",
    "mask_once",
    "read_texts",
    "tokenize_texts",
    "train_pretrain",
]
