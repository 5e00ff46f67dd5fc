"""The one registry of model names: `@model("name")` on a builder (input_shape, n_classes) -> nn.Module."""

from __future__ import annotations

from typing import Callable

BUILDERS: dict[str, Callable] = {}


def model(name: str) -> Callable:
    def register(builder: Callable) -> Callable:
        if name in BUILDERS and BUILDERS[name] is not builder:
            raise RuntimeError(f"model name {name!r} is registered twice ({BUILDERS[name].__module__} and "
                               f"{builder.__module__})")
        BUILDERS[name] = builder
        return builder
    return register
