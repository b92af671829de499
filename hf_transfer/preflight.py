"""Checks that need this machine or the model's configuration, run by ``train`` before any data is read, tokenised
or any weights load.

:func:`hf_transfer.recipe.load_recipe` already refuses values that are wrong anywhere (a negative learning rate,
``r: 0``); what is checked here depends on where and with what the recipe runs: mixed precision without an
accelerator, ``report_to`` integrations that are not installed, and ``max_length`` against the model's position
embeddings (read from its ``config.json`` with ``AutoConfig``: no weights). Every problem is a
:class:`~hf_transfer.errors.RecipeError` naming the field and the fix.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import RecipeError, unknown_choice

logger = logging.getLogger(__name__)

# Model types whose learned positions start after the padding id (RoBERTa's convention): `max_position_embeddings`
# counts those skipped slots, so `pad_token_id + 1` fewer tokens fit.
_PADDING_OFFSET_MODEL_TYPES = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "xmod",
    "roberta-prelayernorm", "ibert", "mpnet", "markuplm", "luke",
})


def check_before_training(recipe: Any) -> None:
    """Every machine- and model-dependent check of a recipe of any family, before anything is read or loaded: a
    flat :class:`hf_transfer.recipe.Recipe`, or a family's recipe whose shared parts are its ``base`` Recipe."""
    from .recipe import Recipe

    base = getattr(recipe, "base", recipe)
    if not isinstance(base, Recipe):
        return
    check_mixed_precision(base.training)
    check_report_to(base.training)
    if base.data.resolved_task.uses_tokens:  # image models have no token positions
        check_max_length(base.model.model_name_or_path, base.data.max_length,
                         revision=base.model.revision, trust_remote_code=base.model.trust_remote_code)


def has_accelerator() -> bool:
    """Whether torch sees a CUDA, XPU, NPU or MPS device."""
    import torch

    if torch.cuda.is_available():
        return True
    for backend in ("xpu", "npu"):
        module = getattr(torch, backend, None)
        if module is not None and getattr(module, "is_available", lambda: False)():
            return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_mixed_precision(args: Any) -> None:
    """``fp16`` needs an accelerator: on the CPU the Trainer would train in fp32 without a word. (``bf16`` does run
    on the CPU, through CPU autocast.)"""
    if args.fp16 and (args.use_cpu or not has_accelerator()):
        where = "use_cpu is set" if args.use_cpu else "this machine has no GPU"
        raise RecipeError(f"fp16: needs a GPU, and {where}; drop fp16 (or use bf16, which runs on the CPU)")


def check_report_to(args: Any) -> None:
    """Each ``report_to`` integration must be known to transformers and installed here (the Trainer would fail
    only when it is built, after the data is tokenised and the model loaded)."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = args.report_to if isinstance(args.report_to, list) else [args.report_to]
    available = set(get_available_reporting_integrations())
    for name in names:
        if name in (None, "none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise unknown_choice("report_to", str(name), [*INTEGRATION_TO_CALLBACK, "none", "all"])
        if name not in available:
            raise RecipeError(f"report_to: {name!r} is not installed here; `pip install {name}`, or leave it out "
                              "(report_to: none)")


def position_limit(config: Any) -> int | None:
    """How many tokens a model's learned absolute positions hold, or ``None`` when it has no such limit (relative
    or rotary positions)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa-v2/v3: relative positions only
        return None
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None):
        return None
    if getattr(config, "rope_theta", None) is not None or getattr(config, "rope_scaling", None) is not None:
        return None
    if getattr(config, "model_type", "") in _PADDING_OFFSET_MODEL_TYPES:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def check_max_length(model: str, max_length: int, *, revision: str | None = None,
                     trust_remote_code: bool = False) -> None:
    """Refuse a ``max_length`` beyond the model's positions (training would fail at its first long batch with a
    tensor-size error). Reads only the model's configuration."""
    from transformers import AutoConfig

    from .backbones import _load_error, resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(model, err) from None
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise RecipeError(f"max_length: {max_length} tokens, but {model!r} has positions for {limit}; set "
                          f"max_length <= {limit}")
