"""The data sets, one module per data set (or family), and the one registry of their names.

A data set is a loader function `(root=, download=, **options) -> Dataset` decorated with
`@dataset("name", n_classes=, default_model=, ...)` (see `_registry.DataSpec`) in any module of
this package: the registry finds it there, and the config, `run --help`, `--model auto`, sweeps
and tests take their lists of names and facts from it. Adding a data set is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._registry import SPECS, DataSpec, dataset
from .base import PADDINGS, UNVERIFIED_ENV, Dataset, augment_batch, crop_flip
from .digits import digits_arrays
from .leaf import LEAF_LETTERS

__all__ = ["Dataset", "DataSpec", "PADDINGS", "STATS", "UNVERIFIED_ENV", "LEAF_LETTERS", "augment_batch",
           "crop_flip", "dataset", "digits_arrays", "fetch", "load", "names", "spec"]

_LOADED = False


def names() -> tuple[str, ...]:
    """Every registered data set: the offline ones, those read from files, those with natural clients."""
    global _LOADED
    if not _LOADED:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return tuple(sorted(SPECS, key=lambda n: (SPECS[n].files, SPECS[n].natural, n)))


def spec(name: str) -> DataSpec:
    names()
    return SPECS[name]


def load(name: str, *, root: str, download: bool, **options) -> Dataset:
    """The data set, loaded; options are the settings a loader may read (synthetic_alpha, ...)."""
    return spec(name).loader(root=root, download=download, **options)


def fetch(name: str, *, root: str) -> None:
    """--download, once, before any rank reads the files."""
    spec(name).fetch(root)


def __getattr__(attr: str):
    if attr == "STATS":  # each image data set's normalization, from its own module
        return {n: spec(n).stats for n in names() if spec(n).stats is not None}
    raise AttributeError(attr)
