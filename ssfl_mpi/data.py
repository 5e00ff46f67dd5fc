"""Data sets as in-memory tensors: offline digits and FedProx synthetic, torchvision MNIST/FashionMNIST/CIFAR,
and LEAF's FEMNIST and Shakespeare from LEAF's own JSON files (natural clients: writers, roles)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UsageError
from .seeding import np_rng

# Per-dataset channel statistics. CIFAR: the SSFL reference's own constants, digit for digit
# (riohib/SSFL data_preprocessing/cifar{10,100}_partitioner.py; CIFAR-100's are 4-digit there).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
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
    black: torch.Tensor | None = None  # per channel: a black pixel after normalization
    train_groups: np.ndarray | None = None  # natural client (writer, role) of each training sample
    test_groups: np.ndarray | None = None   # and of each test sample
    group_names: tuple = ()                 # the natural clients' names, by group number

    def pad_fill(self, padding: str) -> torch.Tensor | None:
        """What augmentation pads with: "black" (the raw image padded before normalizing, as
        torchvision's pipeline and the reference do) or "mean" (0 after normalizing: the mean colour)."""
        if padding not in PADDINGS:
            raise ValueError(f"padding {padding!r} not in {PADDINGS}")
        return self.black if padding == "black" else None

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
    if name in LEAF:
        return _leaf(name, root)
    return _torchvision(name, root=root, download=download)


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


def _digits() -> Dataset:
    images, target = digits_arrays()
    x = torch.tensor(images / 16.0, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    x = (x - x.mean()) / x.std()
    y = target.astype(np.int64)
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


# Only the tests set this: generated files in torchvision's layouts cannot match its checksums.
UNVERIFIED_ENV = "SSFL_MPI_TEST_UNVERIFIED_DATA"


def _torchvision_class(name: str):
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST,
           "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    if os.environ.get(UNVERIFIED_ENV) != "1" or not hasattr(cls, "train_list"):
        return cls  # MNIST-style classes check only that the files exist
    # CIFAR: same reader, checksums None (torchvision then checks only that each file exists).
    unverified = {"train_list": [[f, None] for f, _ in cls.train_list],
                  "test_list": [[f, None] for f, _ in cls.test_list],
                  "meta": {**cls.meta, "md5": None}}
    return type(f"Unverified{cls.__name__}", (cls,), unverified)


def fetch(name: str, *, root: str) -> None:
    """--download: torchvision's download of both splits, once, before any rank reads them."""
    cls = _torchvision_class(name)
    try:
        os.makedirs(root, exist_ok=True)
        for train in (True, False):
            cls(root, train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError, RuntimeError: one line for all
        reason = getattr(exc, "reason", None) or exc
        raise UsageError(f"cannot download {name} into {root!r} ({type(exc).__name__}: {reason}); copy the "
                         f"files there from a machine with network") from None


def _torchvision(name: str, *, root: str, download: bool) -> Dataset:
    cls = _torchvision_class(name)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as exc:
        if "not found" in str(exc):  # torchvision's "Dataset not found or corrupted": missing or bad checksum
            raise UsageError(f"{name} not found under {root!r}, or its files fail torchvision's checksum "
                             f"({exc}): copy the original files there or pass --download on a machine "
                             f"with network") from None
        raise UsageError(f"{name} under {root!r} is unreadable or truncated ({exc}); replace its files") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            pickle.UnpicklingError) as exc:  # files present but not readable in the expected layout
        raise UsageError(f"{name} under {root!r} is unreadable or truncated "
                         f"({type(exc).__name__}: {exc}); replace its files") from None
    mean, std = STATS[name]
    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)

    def to_tensor(raw) -> torch.Tensor:
        # The reference's ToTensor() then Normalize(mean, std), in the same operation order.
        x = torch.as_tensor(np.asarray(raw)).float().div_(255)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        return ((x - mean) / std).contiguous()

    labels = np.asarray(train.targets, dtype=np.int64)
    test_labels = np.asarray(test.targets, dtype=np.int64)
    n_classes = len(train.classes)
    _check_arrays(name, root, train.data, labels, test.data, test_labels, n_classes)
    shape = tuple(to_tensor(train.data[:1]).shape[1:])
    black = ((torch.zeros_like(mean) - mean) / std).flatten()
    return Dataset(name, labels, n_classes, shape,
                   lambda idx: to_tensor(train.data[idx]),
                   lambda: (to_tensor(test.data), torch.as_tensor(test_labels)),
                   augment=name.startswith("cifar"), black=black)


def _check_arrays(name: str, root: str, x, y, xt, yt, n_classes: int) -> None:
    """Files that parse but hold the wrong things: one line naming what is wrong."""
    where = f"{name} under {root!r}"
    for split, images, labels in (("training", x, y), ("test", xt, yt)):
        if len(labels) == 0:
            raise UsageError(f"{where}: the {split} set is empty")
        if len(images) != len(labels):
            raise UsageError(f"{where}: the {split} set has {len(images)} images but {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise UsageError(f"{where}: {split} labels outside [0, {n_classes - 1}] "
                             f"(found {labels.min()}..{labels.max()})")
    if tuple(np.shape(x)[1:]) != tuple(np.shape(xt)[1:]):
        raise UsageError(f"{where}: training images {tuple(np.shape(x)[1:])} and test images "
                         f"{tuple(np.shape(xt)[1:])} differ in shape")


PADDINGS = ("black", "mean")


def crop_flip(x: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor, *,
              pad: int, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Pad every image by `pad` with `fill` (per channel; None: 0), crop h x w at (top, left), flip.

    One indexing operation for the whole batch. With fill = the normalized value of a black pixel
    this is torchvision's RandomCrop(padding=pad) then RandomHorizontalFlip on the raw image,
    followed by Normalize, as the reference pipeline does.
    """
    n, c, h, w = x.shape
    dev = x.device  # on a GPU the whole crop runs there: the few random numbers are moved, not the images
    padded = x.new_zeros((n, c, h + 2 * pad, w + 2 * pad))
    if fill is not None:
        padded += fill.to(device=dev, dtype=x.dtype).view(1, c, 1, 1)
    padded[:, :, pad: pad + h, pad: pad + w] = x
    tops, lefts, flips = tops.to(dev), lefts.to(dev), flips.to(dev)
    rows = tops.view(n, 1) + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flips.view(n, 1), w - 1 - cols, cols) + lefts.view(n, 1)
    return padded[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                  rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def augment_batch(x: torch.Tensor, gen: torch.Generator, *, pad: int = 4,
                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop with padding and horizontal flip, per sample, from our own generator."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    return crop_flip(x, offsets[:, 0], offsets[:, 1], flip, pad=pad, fill=fill)


# LEAF (Caldas et al. 2018): its preprocess.sh writes data/<name>/data/{train,test}/*.json, each
# {"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}.
LEAF = {"femnist": 62, "shakespeare": 80}
# LEAF's Shakespeare vocabulary (models/shakespeare/language_utils.py): 80 symbols.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SHAKESPEARE_SEQ = 80


def _leaf_split(name: str, folder: str) -> dict[str, tuple[list, list]]:
    """user -> (x, y) of one split folder, every file read and checked."""
    import json

    if not os.path.isdir(folder):
        raise UsageError(f"{name}: no folder {folder!r}: --data-root must be LEAF's data/{name}/data folder "
                         f"holding train/ and test/ (see the README for LEAF's preprocess.sh)")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    if not files:
        raise UsageError(f"{name}: no .json files in {folder!r} (run LEAF's preprocess.sh; see the README)")
    users: dict[str, tuple[list, list]] = {}
    for fname in files:
        path = os.path.join(folder, fname)
        try:
            with open(path, "rb") as fh:
                d = json.load(fh)
            for user in d["users"]:
                block = d["user_data"][user]
                x, y = block["x"], block["y"]
                if len(x) != len(y):
                    raise ValueError(f"user {user!r} has {len(x)} inputs and {len(y)} labels")
                if user in users:
                    raise ValueError(f"user {user!r} appears twice in this split")
                users[user] = (x, y)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{name}: {path!r} is not a LEAF data file ({type(exc).__name__}: {exc})") from None
    if not users:
        raise UsageError(f"{name}: the .json files in {folder!r} list no users (an empty LEAF split: run LEAF's "
                         f"preprocess.sh again; see the README)")
    return users


def _integer_labels(ys: list) -> np.ndarray:
    """Class labels as int64; a label that is not a whole number is refused, never truncated."""
    bad = next((v for v in ys if isinstance(v, bool) or not isinstance(v, (int, float))
                or (isinstance(v, float) and not v.is_integer())), None)
    if bad is not None:
        raise ValueError(f"a label is {bad!r}, not a class number")
    return np.asarray(ys, dtype=np.int64)


def _leaf_arrays(name: str, users: dict, order: list[str], where: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(x, y, group) of the users in `order`, checked against the data set's format."""
    xs, ys, groups = [], [], []
    for g, user in enumerate(order):
        x, y = users.get(user, ([], []))
        xs.extend(x)
        ys.extend(y)
        groups.extend([g] * len(y))
    try:
        if name == "femnist":
            xa = np.asarray(xs, dtype=np.float32).reshape(-1, 1, 28, 28)
            ya = _integer_labels(ys)
            if len(xs) and np.asarray(xs[0]).size != 784:
                raise ValueError("an image is not 784 values")
        else:
            bad = next((s for s in xs if not isinstance(s, str) or len(s) != SHAKESPEARE_SEQ), None)
            if bad is not None:
                raise ValueError(f"an input is not an {SHAKESPEARE_SEQ}-character string: {str(bad)[:20]!r}")
            xa = np.array([[LEAF_LETTERS.find(c) for c in s] for s in xs], dtype=np.int64).reshape(-1, SHAKESPEARE_SEQ)
            ya = np.array([LEAF_LETTERS.find(c) if isinstance(c, str) and len(c) == 1 else -1 for c in ys],
                          dtype=np.int64)
            if (xa < 0).any():
                raise ValueError("an input holds a character outside LEAF's 80-symbol vocabulary")
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{name}: the {where} data are not in LEAF's {name} format ({exc})") from None
    if len(ya) and (ya.min() < 0 or ya.max() >= LEAF[name]):
        raise UsageError(f"{name}: the {where} data hold labels outside 0..{LEAF[name] - 1}")
    return torch.from_numpy(xa), ya, np.asarray(groups, dtype=np.int64)


def _leaf(name: str, root: str) -> Dataset:
    """Natural clients in sorted user order; a user's test samples are its own test split."""
    train = _leaf_split(name, os.path.join(root, "train"))
    test = _leaf_split(name, os.path.join(root, "test"))
    order = sorted(train)
    x, y, groups = _leaf_arrays(name, train, order, "train")
    xt, yt, test_groups = _leaf_arrays(name, test, order, "test")
    if not len(yt):
        raise UsageError(f"{name}: the test split under {root!r} holds no samples of the training users")
    shape = (1, 28, 28) if name == "femnist" else (SHAKESPEARE_SEQ,)
    return Dataset(name, y, LEAF[name], shape, x, (xt, torch.from_numpy(yt)), train_groups=groups,
                   test_groups=test_groups, group_names=tuple(order))
