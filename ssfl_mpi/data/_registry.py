"""The registry every data set module writes itself into with `@dataset(...)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class DataSpec:
    """What the rest of the tool needs to know about a data set before (and without) loading it."""

    name: str
    loader: Callable          # (root=..., download=..., **options) -> Dataset
    n_classes: int
    default_model: str        # --model auto
    summary: str = ""
    files: bool = False       # read from files under --data-root (not shipped with the tool)
    natural: bool = False     # its samples carry their natural client (LEAF writers, roles)
    fetch: Callable | None = None  # (root) -> None: --download, where the data set can be downloaded
    obtain: str = ""          # how a user gets the files, for the message when they are missing
    stats: tuple | None = None  # per-channel (mean, std) the images are normalized with


SPECS: dict[str, DataSpec] = {}


def dataset(name: str, **fields) -> Callable:
    """Register the decorated loader as data set `name` (see DataSpec for the fields)."""
    def register(loader: Callable) -> Callable:
        if name in SPECS and SPECS[name].loader is not loader:
            raise RuntimeError(f"data set {name!r} is registered twice ({SPECS[name].loader.__module__} and "
                               f"{loader.__module__})")
        SPECS[name] = DataSpec(name=name, loader=loader, **fields)
        return loader
    return register
