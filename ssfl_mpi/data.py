"""Data sets as in-memory tensors: offline digits and FedProx synthetic, torchvision MNIST/FashionMNIST/CIFAR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError
from .seeding import np_rng

# Per-dataset channel statistics used by the torchvision reference pipelines.
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATA_SEED = 0  # the data set (digits test split, synthetic draw) does not change with --seed
SYNTHETIC_GROUPS, SYNTHETIC_PER_GROUP, SYNTHETIC_DIM, SYNTHETIC_CLASSES = 30, 100, 60, 10


@dataclass
class Dataset:
    """Train labels for partitioning everywhere; features are materialised per subset on demand."""

    name: str
    train_labels: np.ndarray
    n_classes: int
    input_shape: tuple
    _train_x: object
    _test: tuple
    augment: bool = False

    def train_subset(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._train_x(indices) if callable(self._train_x) else self._train_x[indices]
        return x, torch.as_tensor(self.train_labels[indices], dtype=torch.int64)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._test() if callable(self._test) else self._test
        return x, y


def load(name: str, *, root: str, download: bool, synthetic_alpha: float = 1.0,
         synthetic_beta: float = 1.0) -> Dataset:
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic(synthetic_alpha, synthetic_beta)
    return _torchvision(name, root=root, download=download)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    x = (x - x.mean()) / x.std()
    y = bunch.target.astype(np.int64)
    perm = np_rng(DATA_SEED, "test-split").permutation(len(y))
    test, train = perm[:300], np.sort(perm[300:])
    return Dataset("digits", y[train], 10, (1, 8, 8), x[train],
                   (x[test], torch.as_tensor(y[test])))


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


def _synthetic(alpha: float, beta: float) -> Dataset:
    x, y = synthetic_groups(alpha, beta, groups=SYNTHETIC_GROUPS, per_group=SYNTHETIC_PER_GROUP,
                            dim=SYNTHETIC_DIM, n_classes=SYNTHETIC_CLASSES,
                            rng=np_rng(DATA_SEED, "synthetic"))
    perm = np_rng(DATA_SEED, "test-split").permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], np.sort(perm[n_test:])
    xt = torch.from_numpy(x)
    return Dataset("synthetic", y[train], SYNTHETIC_CLASSES, (SYNTHETIC_DIM,), xt[train],
                   (xt[test], torch.as_tensor(y[test])))


def _torchvision(name: str, *, root: str, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST,
           "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise UsageError(f"{name} not found under {root!r} ({exc}): copy it there or pass "
                         f"--download on a machine with network") from None
    mean, std = STATS[name]
    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)

    def to_tensor(raw) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(raw)).float().div_(255)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        return ((x - mean) / std).contiguous()

    labels = np.asarray(train.targets, dtype=np.int64)
    n_classes = len(train.classes)
    shape = tuple(to_tensor(train.data[:1]).shape[1:])
    return Dataset(name, labels, n_classes, shape,
                   lambda idx: to_tensor(train.data[idx]),
                   lambda: (to_tensor(test.data), torch.as_tensor(np.asarray(test.targets))),
                   augment=name.startswith("cifar"))


def augment_batch(x: torch.Tensor, gen: torch.Generator, *, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per sample, from our own generator."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i in range(n):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top: top + h, left: left + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out
