"""Small data sets in the exact on-disk layouts torchvision reads (CIFAR python batches, MNIST idx).

Used by the tests, and to time the paper presets at full size without the real data:

    python -m tests.datagen cifar10 DIR [--train 50000 --test 10000]

The images are random with a class-dependent brightness, so a model can learn something; the
files differ from the real ones only in content (torchvision's checksums of CIFAR do not match
them: load with SSFL_MPI_TEST_UNVERIFIED_DATA=1).
"""

from __future__ import annotations

import argparse
import json
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
MNIST_FOLDERS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}


def images(rng: np.random.Generator, labels: np.ndarray, shape: tuple, n_classes: int) -> np.ndarray:
    base = rng.integers(0, 128, size=(len(labels), *shape), dtype=np.int64)
    shift = (labels * (127 // max(1, n_classes - 1))).reshape(-1, *([1] * len(shape)))
    return (base + shift).clip(0, 255).astype(np.uint8)


def write_cifar(name: str, root: Path, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta; CIFAR-100:
    cifar-100-python/train, test, meta. Pickled dicts of uint8 rows [n, 3072] (channel-major)."""
    n_classes = CIFAR_CLASSES[name]
    rng = np.random.default_rng(seed)
    folder = Path(root) / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def split(n):
        y = rng.integers(0, n_classes, size=n)
        y[:n_classes] = np.arange(min(n, n_classes))  # every class present
        return images(rng, y, (3 * 32 * 32,), n_classes), y

    def dump(path, x, y):
        key = "labels" if name == "cifar10" else "fine_labels"
        entry = {"data": x, key: [int(v) for v in y], "batch_label": path.name.encode()}
        if name == "cifar100":
            entry["coarse_labels"] = [int(v) // 5 for v in y]
        path.write_bytes(pickle.dumps(entry))

    x, y = split(n_train)
    if name == "cifar10":
        for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5)), start=1):
            dump(folder / f"data_batch_{i}", xs, ys)
        dump(folder / "test_batch", *split(n_test))
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    else:
        dump(folder / "train", x, y)
        dump(folder / "test", *split(n_test))
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)],
                                                    "coarse_label_names": [f"g{i}" for i in range(20)]}))
    return folder


def write_mnist(name: str, root: Path, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """<Name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, big-endian idx headers."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / MNIST_FOLDERS[name] / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        x = images(rng, y, (28, 28), 10)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.tobytes())
    return folder


def write_svhn(name: str, root: Path, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """train_32x32.mat and test_32x32.mat as the SVHN site ships them (MATLAB 5 files): X uint8
    [32, 32, 3, n], y uint8 [n, 1] with labels 1..10, where 10 stands for the digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        digit = rng.integers(0, 10, size=n)
        digit[:10] = np.arange(min(n, 10))  # every class present
        x = images(rng, digit, (3, 32, 32), 10)  # channel-major, as torchvision returns them
        savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0),
                                                "y": np.where(digit == 0, 10, digit).astype(np.uint8)[:, None]})
    return folder


def write(name: str, root: Path, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    writer = write_cifar if name in CIFAR_CLASSES else write_svhn if name == "svhn" else write_mnist
    return writer(name, Path(root), n_train=n_train, n_test=n_test, seed=seed)


LEAF_USERS_PER_FILE = 100  # LEAF's own limit


def write_leaf(name: str, root: Path, *, writers: int, per_writer: tuple[int, int] = (8, 20),
               train_fraction: float = 0.9, seed: int = 0) -> Path:
    """LEAF's data/<name>/data layout: train/ and test/ folders of JSON files of at most 100 users.

    FEMNIST: writers "f0000_00"..., x 784 floats in [0, 1], y in 0..61, each writer favouring a few
    classes (learnable skew). Shakespeare: roles "PLAY_ROLE_n" with `hierarchies`, x 80-character
    strings over LEAF's vocabulary, y the next character of the role's text.
    """
    from ssfl_mpi.data import LEAF_LETTERS

    rng = np.random.default_rng(seed)
    folder = Path(root)
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "test": []}
    for w in range(writers):
        n = int(rng.integers(*per_writer))
        if name == "femnist":
            user = f"f{w:04d}_{w % 100:02d}"
            favourite = rng.choice(62, size=3, replace=False)
            y = rng.choice(favourite, size=n)
            protos = np.random.default_rng(1000 + seed).random((62, 784)) < 0.2
            x = np.clip(protos[y] + rng.normal(0, 0.2, (n, 784)), 0, 1).round(4)
            data = [(x[i].tolist(), int(y[i])) for i in range(n)]
        else:
            user = f"PLAY_{w // 5}_ROLE_{w}"
            text = "".join(rng.choice(list(LEAF_LETTERS[:60]), size=n + 80))
            data = [(text[i: i + 80], text[i + 80]) for i in range(n)]
        n_train = max(1, int(round(train_fraction * n)))
        splits["train"].append((user, data[:n_train]))
        splits["test"].append((user, data[n_train:]))
    for split, users in splits.items():
        for f in range(0, len(users), LEAF_USERS_PER_FILE):
            chunk = users[f: f + LEAF_USERS_PER_FILE]
            d = {"users": [u for u, _ in chunk], "num_samples": [len(s) for _, s in chunk],
                 "user_data": {u: {"x": [a for a, _ in s], "y": [b for _, b in s]} for u, s in chunk}}
            if name == "shakespeare":
                d["hierarchies"] = [u.split("_ROLE_")[0] for u, _ in chunk]
            tag = f"all_data_{f // LEAF_USERS_PER_FILE}_niid_0_keep_0_{split}_9.json"
            (folder / split / tag).write_text(json.dumps(d))
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=(*CIFAR_CLASSES, *MNIST_FOLDERS, "svhn", "femnist", "shakespeare"))
    p.add_argument("root")
    p.add_argument("--train", type=int, default=50000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--writers", type=int, default=300, help="femnist/shakespeare: writers or roles")
    a = p.parse_args()
    if a.dataset in ("femnist", "shakespeare"):
        print(write_leaf(a.dataset, Path(a.root), writers=a.writers, seed=a.seed))
    else:
        print(write(a.dataset, Path(a.root), n_train=a.train, n_test=a.test, seed=a.seed))


if __name__ == "__main__":
    main()
