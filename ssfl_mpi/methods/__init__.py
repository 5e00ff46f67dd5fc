"""The federated methods, one module per family, and the one registry of their names.

A method is a `base.Method` subclass with a `name`, defined in any module of this package: the
registry finds it there, and the config, `run --help`, `presets`, sweeps and tests all take their
lists of names from `names()`. Adding a method is adding a module (or a class to a family's).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import MaskContext, Method

__all__ = ["Method", "MaskContext", "registry", "get", "names"]

_REGISTRY: dict[str, Method] | None = None


def registry() -> dict[str, Method]:
    """name -> method instance, in module order, then definition order within a module."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, Method] = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "static", m.name)):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                if (isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__
                        and isinstance(obj.__dict__.get("name"), str)):
                    if obj.name in found and type(found[obj.name]) is not obj:
                        raise RuntimeError(f"method name {obj.name!r} is defined twice "
                                           f"({type(found[obj.name]).__module__} and {module.__name__})")
                    found[obj.name] = obj()
        _REGISTRY = found
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> Method:
    return registry()[name]
