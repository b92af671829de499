"""What a frozen EfficientNet-Lite backbone hands its head, and what a greyscale digit becomes on its way in."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hf_transfer.backbones import freeze_batchnorm_statistics, set_trainable_top_layers
from hf_transfer.methods._batchnorm import batch_norm_layers
from hf_transfer.vision.data import ImageCollator
from hf_transfer.vision.efficientnet import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetLiteConfig,
    EfficientNetLiteForImageClassification,
    image_processor_for,
)


def test_frozen_backbone_gives_its_pretrained_pooled_features_in_inference_mode():
    torch.manual_seed(0)
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=10, image_size=32))
    with torch.no_grad():  # statistics unlike a fresh layer's, so that any drift or batch statistics would show
        for _, bn in batch_norm_layers(model):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    freeze_batchnorm_statistics(model)  # what the image task's prepare_model does
    set_trainable_top_layers(model, 0)  # freeze_backbone: true
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.randn(6, 3, 32, 32)
    head_inputs = []
    model.classifier[1].register_forward_hook(lambda m, args, out: head_inputs.append(args[0].detach()))

    model.train()  # the Trainer's mode: the head's dropout is active, the frozen backbone must not be
    model(x)

    assert all(not bn.training for _, bn in batch_norm_layers(model))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())  # no statistic moved
    # the head got the backbone's inference-mode pooled features: the 1280-wide global average of the last
    # (head conv, batch norm, ReLU6) stage, computed by hand here from the layers
    net = model.efficientnet.eval()
    with torch.no_grad():
        h = net.act(net.stem_bn(net.stem_conv(x)))
        for block in net.blocks:
            h = block(h)
        pooled = net.act(net.head_bn(net.head_conv(h))).mean(dim=(2, 3))
    assert pooled.shape == (6, 1280)
    # the head's input is that, after the classifier's dropout (active in training mode)
    kept = head_inputs[0] != 0
    scale = 1 / (1 - model.config.dropout_rate)
    torch.testing.assert_close(head_inputs[0][kept], (pooled * scale)[kept], rtol=1e-4, atol=1e-5)


def test_a_grey_digit_becomes_three_equal_channels_normalised_as_the_backbone_was_trained():
    grey = np.zeros((16, 16), dtype=np.uint8)
    grey[4:12, 6:10] = 200
    pixels = ImageCollator(image_processor_for(64)).pixel_values([Image.fromarray(grey)])
    assert pixels.shape == (1, 3, 64, 64)
    torch.testing.assert_close(pixels[0, 0], pixels[0, 1])
    torch.testing.assert_close(pixels[0, 0], pixels[0, 2])
    # background (0) and a stroke's inside (200) as (x - 127) / 128, EfficientNet-Lite's own input scaling
    assert LITE_MEAN == [127 / 255] * 3 and LITE_STD == [128 / 255] * 3
    np.testing.assert_allclose(float(pixels[0, 0, 0, 0]), (0 - 127) / 128, rtol=1e-6)
    np.testing.assert_allclose(float(pixels[0, 0, 32, 32]), (200 - 127) / 128, rtol=1e-5)
