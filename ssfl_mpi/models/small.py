"""Small models: an MLP (FedProx's Synthetic) and a CNN for 8x8 or 28x28 images."""

from __future__ import annotations

from torch import nn

from ..errors import UsageError
from ._registry import model


@model("mlp")
def mlp(input_shape: tuple, n_classes: int, hidden: int = 200) -> nn.Module:
    n_in = 1
    for d in input_shape:
        n_in *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


@model("cnn")
def cnn(input_shape: tuple, n_classes: int) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
        raise UsageError(f"model cnn needs image inputs with sides divisible by 4, got shape {input_shape}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, n_classes))
