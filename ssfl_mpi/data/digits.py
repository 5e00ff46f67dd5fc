"""scikit-learn's bundled 8x8 digits: the offline default (1,797 images, 300 held out for test)."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..seeding import np_rng
from ._registry import dataset
from .base import DATA_SEED, Dataset


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float64 in 0..16, labels) of scikit-learn's bundled digits, read from its
    file without importing scikit-learn (1.3 s of start-up on every rank otherwise)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else ""
    if not os.path.isfile(path):
        from sklearn.datasets import load_digits  # a layout we do not know: its own loader

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",")
    return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)


@dataset("digits", n_classes=10, default_model="cnn", summary="scikit-learn's 8x8 digits (offline)")
def load_digits(**_) -> Dataset:
    images, target = digits_arrays()
    x = torch.tensor(images / 16.0, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    x = (x - x.mean()) / x.std()
    y = target.astype(np.int64)
    perm = np_rng(DATA_SEED, "test-split").permutation(len(y))
    test, train = perm[:300], np.sort(perm[300:])
    return Dataset("digits", y[train], 10, (1, 8, 8), x[train],
                   (x[test], torch.as_tensor(y[test])))


