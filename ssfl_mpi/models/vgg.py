"""VGG-11 for CIFAR-sized images (Simonyan & Zisserman 2015, configuration A), as the sparse-FL
literature runs it on CIFAR (DisPFL, FedDST): eight 3x3 convs, five 2x2 max-pools, one linear
classifier over the 512 channels left at 1x1. GroupNorm(32) after every conv instead of
BatchNorm: the rounds carry parameters only (see `models.build`), as the paper's ResNet-18 does."""

from __future__ import annotations

from torch import nn

from ..errors import UsageError
from ._registry import model

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@model("vgg11")
def vgg11(input_shape: tuple, n_classes: int) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] % 32 or input_shape[2] % 32:
        raise UsageError(f"model vgg11 needs image inputs with sides divisible by 32 (five 2x2 pools), "
                         f"got shape {input_shape}")
    layers, channels = [], input_shape[0]
    for v in VGG11:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.GroupNorm(32, v), nn.ReLU(inplace=True)]
            channels = v
    spatial = (input_shape[1] // 32) * (input_shape[2] // 32)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * spatial, n_classes))
