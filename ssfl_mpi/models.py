"""Models: an MLP, a small CNN for 8x8/28x28 inputs, ResNet-18 with CIFAR stem and GroupNorm."""

from __future__ import annotations

import torch
from torch import nn

from .errors import UsageError

AUTO_MODEL = {"digits": "cnn", "synthetic": "mlp", "mnist": "cnn", "fashionmnist": "cnn",
              "cifar10": "resnet18", "cifar100": "resnet18"}


def mlp(input_shape: tuple, n_classes: int, hidden: int = 200) -> nn.Module:
    n_in = 1
    for d in input_shape:
        n_in *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def cnn(input_shape: tuple, n_classes: int) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
        raise UsageError(f"model cnn needs image inputs with sides divisible by 4, got shape {input_shape}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, n_classes))


def resnet18(input_shape: tuple, n_classes: int) -> nn.Module:
    """The paper's ResNet-18: 3x3 stride-1 stem, no max-pool, GroupNorm(32) instead of BatchNorm."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise UsageError(f"model resnet18 needs image inputs, got shape {input_shape}")
    model = tv_resnet18(num_classes=n_classes, norm_layer=lambda ch: nn.GroupNorm(32, ch))
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


BUILDERS = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18}


def build(name: str, *, dataset: str, input_shape: tuple, n_classes: int, seed: int) -> nn.Module:
    """The same initial weights on every rank: built under a private copy of torch's RNG."""
    name = resolve(name, dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BUILDERS[name](input_shape, n_classes)


def resolve(name: str, dataset: str) -> str:
    return AUTO_MODEL[dataset] if name == "auto" else name
