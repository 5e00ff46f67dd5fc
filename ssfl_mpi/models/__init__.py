"""The models, one module per family, and the one registry of their names.

A model is a builder function `(input_shape, n_classes) -> nn.Module` decorated with
`@model("name")` in any module of this package: the registry finds it there, and the config,
`run --help`, sweeps and tests take their lists of names from `names()`. Adding a model is adding
a function (or a module holding it). Models hold parameters only (see `build`).
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

from ..errors import UsageError
from ._registry import BUILDERS, model

__all__ = ["build", "model", "names", "resolve"]

_LOADED = False


def names() -> tuple[str, ...]:
    """Every registered model, in module order, then definition order within a module."""
    global _LOADED
    if not _LOADED:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return tuple(BUILDERS)


def build(name: str, *, dataset: str, input_shape: tuple, n_classes: int, seed: int) -> nn.Module:
    """The same initial weights on every rank: built under a private copy of torch's RNG."""
    name = resolve(name, dataset)
    if name not in names():
        raise UsageError(f"unknown model {name!r} (choose from {', '.join(names())})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BUILDERS[name](input_shape, n_classes)
    buffers = [n for n, _ in net.named_buffers()]
    if buffers:  # only parameters travel, aggregate and checkpoint: running statistics would drift unseen
        raise UsageError(f"model {name!r} keeps state outside its parameters ({', '.join(buffers[:3])}"
                         f"{', ...' if len(buffers) > 3 else ''}: BatchNorm running statistics, say), which "
                         f"the rounds do not send, aggregate or checkpoint; use GroupNorm, as the paper's "
                         f"ResNet-18 does, or a model without buffers")
    return net


def resolve(name: str, dataset: str) -> str:
    """--model auto is the data set's own default (its module declares it)."""
    from .. import data

    return data.spec(dataset).default_model if name == "auto" else name
