"""The federated methods, one module per family, and the one registry of their names.

A method is a `base.Method` subclass with a `name`, defined in any module of this package: the
registry finds it there, and the config, `run --help`, `presets`, sweeps and tests all take their
lists of names from `names()`. A method's own settings are `Option`s on its class (`options`): the
config gains them as fields and the CLI as flags. Adding a method is adding a module (or a class to
a family's); `get` gives a fresh instance, so nothing a method keeps outlives a run.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import MaskContext, Method, Option

__all__ = ["Method", "MaskContext", "Option", "registry", "get", "names", "options"]

_REGISTRY: dict[str, type[Method]] | None = None


def registry() -> dict[str, type[Method]]:
    """name -> method class, in module order, then definition order within a module."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, Method] = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "static", m.name)):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                if (isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__
                        and isinstance(obj.__dict__.get("name"), str)):
                    if obj.name in found and found[obj.name] is not obj:
                        raise RuntimeError(f"method name {obj.name!r} is defined twice "
                                           f"({found[obj.name].__module__} and {module.__name__})")
                    found[obj.name] = obj
        _REGISTRY = found
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> Method:
    """A fresh instance of the named method."""
    return registry()[name]()


def options() -> dict[str, tuple[Option, tuple[str, ...]]]:
    """config key -> (its Option, the methods that declare it), over every registered method."""
    found: dict[str, tuple[Option, tuple[str, ...]]] = {}
    for name, cls in registry().items():
        for key, opt in cls.options.items():
            if key in found and found[key][0] != opt:
                raise RuntimeError(f"option {key!r} is declared differently by {found[key][1][0]} and {name}: "
                                   f"declare it once (methods/base.py) and share it")
            found[key] = (opt, (*found.get(key, (opt, ()))[1], name))
    return found
