"""The paper's CIFAR ResNet-18 (GroupNorm), as the SSFL authors build it, and torchvision's variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ._registry import model

GROUPS = 32  # GroupNorm groups, as the reference


class BasicBlock(nn.Module):
    """The reference's CIFAR basic block: two 3x3 convs with GroupNorm, a 1x1 conv + GN `shortcut`."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(GROUPS, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(GROUPS, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.GroupNorm(GROUPS, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The SSFL authors' ResNet (api/model/resnet.py, `customized_resnet18`): 3x3 stride-1 stem, no
    max-pool, GroupNorm(32) everywhere, layers named conv1/bn1/layer1-4/linear as theirs.

    Every layer keeps PyTorch's default initialization (kaiming_uniform with a = sqrt(5): conv
    weight std 1/sqrt(3 fan_in)), as the reference does. torchvision's resnet18 re-initializes
    convs with kaiming_normal(fan_out), 1.7-2.45x larger, which moves |g * w| saliency and with it
    the SSFL mask (per-layer densities by up to 0.08): see `resnet18-torchvision`.
    """

    def __init__(self, in_channels: int, n_classes: int, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(GROUPS, 64)
        layers, planes_in = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks_i = []
            for stride in strides:
                blocks_i.append(BasicBlock(planes_in, planes, stride))
                planes_in = planes
            layers.append(nn.Sequential(*blocks_i))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # The reference's avg_pool2d(out, 4) on 32x32 inputs, where layer4 is 4x4 (the same kernel,
        # so the same arithmetic); a kernel of the whole map also takes other input sizes.
        out = F.avg_pool2d(out, tuple(out.shape[-2:])).flatten(1)
        return self.linear(out)


@model("resnet18")
def resnet18(input_shape: tuple, n_classes: int) -> nn.Module:
    """The paper's ResNet-18 as the authors' code builds and initializes it."""
    if len(input_shape) != 3:
        raise UsageError(f"model resnet18 needs image inputs, got shape {input_shape}")
    return CifarResNet(input_shape[0], n_classes)


@model("resnet18-torchvision")
def resnet18_torchvision(input_shape: tuple, n_classes: int) -> nn.Module:
    """torchvision's resnet18 with the same CIFAR stem and GroupNorm, and torchvision's own
    re-initialization of its convs (kaiming_normal, fan_out; the replaced stem keeps PyTorch's
    default); shortcuts are named `downsample`. This project's model before the reference profile."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise UsageError(f"model resnet18-torchvision needs image inputs, got shape {input_shape}")
    model = tv_resnet18(num_classes=n_classes, norm_layer=lambda ch: nn.GroupNorm(GROUPS, ch))
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
