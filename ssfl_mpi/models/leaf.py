"""LEAF's models: the FEMNIST CNN and the Shakespeare character LSTM."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from ._registry import model


@model("femnist-cnn")
def femnist_cnn(input_shape: tuple, n_classes: int) -> nn.Module:
    """LEAF's FEMNIST CNN: conv5x5-32, pool, conv5x5-64, pool, dense 2048, n_classes (62)."""
    if tuple(input_shape) != (1, 28, 28):
        raise UsageError(f"model femnist-cnn needs 1x28x28 images, got shape {input_shape}")
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 2048), nn.ReLU(), nn.Linear(2048, n_classes))


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: embedding 8, two LSTM(256) layers, dense over the vocabulary on the
    last step."""

    def __init__(self, vocab: int, embed: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


@model("char-lstm")
def char_lstm(input_shape: tuple, n_classes: int) -> nn.Module:
    if len(input_shape) != 1:
        raise UsageError(f"model char-lstm needs character sequences, got input shape {input_shape}")
    return CharLSTM(n_classes)
