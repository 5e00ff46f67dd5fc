"""FedProx's Synthetic(alpha, beta) (Li et al. 2020), generated: 30 groups of 100 samples, 60 features."""

from __future__ import annotations

import numpy as np
import torch

from ..seeding import np_rng
from ._registry import dataset
from .base import DATA_SEED, Dataset

SYNTHETIC_GROUPS, SYNTHETIC_PER_GROUP, SYNTHETIC_DIM, SYNTHETIC_CLASSES = 30, 100, 60, 10


def synthetic_groups(alpha: float, beta: float, *, groups: int, per_group: int, dim: int,
                     n_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """FedProx Synthetic(alpha, beta): group k draws its own softmax model and input mean."""
    cov = np.diag(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    xs, ys = [], []
    for _ in range(groups):
        u, b_mean = rng.normal(0, alpha), rng.normal(0, beta)
        w = rng.normal(u, 1, size=(n_classes, dim))
        b = rng.normal(u, 1, size=n_classes)
        v = rng.normal(b_mean, 1, size=dim)
        x = rng.multivariate_normal(v, cov, size=per_group)
        xs.append(x)
        ys.append(np.argmax(x @ w.T + b, axis=1))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


@dataset("synthetic", n_classes=SYNTHETIC_CLASSES, default_model="mlp",
         summary="FedProx Synthetic(alpha, beta), generated (offline)")
def load_synthetic(*, synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0, **_) -> Dataset:
    alpha, beta = synthetic_alpha, synthetic_beta
    x, y = synthetic_groups(alpha, beta, groups=SYNTHETIC_GROUPS, per_group=SYNTHETIC_PER_GROUP,
                            dim=SYNTHETIC_DIM, n_classes=SYNTHETIC_CLASSES,
                            rng=np_rng(DATA_SEED, "synthetic"))
    perm = np_rng(DATA_SEED, "test-split").permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], np.sort(perm[n_test:])
    xt = torch.from_numpy(x)
    return Dataset("synthetic", y[train], SYNTHETIC_CLASSES, (SYNTHETIC_DIM,), xt[train],
                   (xt[test], torch.as_tensor(y[test])))


