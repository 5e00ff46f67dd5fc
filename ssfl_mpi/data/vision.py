"""torchvision's MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, read from their original files."""

from __future__ import annotations

import os

from ._registry import dataset
from .base import UNVERIFIED_ENV, download_splits, image_dataset, open_splits

# CIFAR: the SSFL reference's own constants, digit for digit (riohib/SSFL
# data_preprocessing/cifar{10,100}_partitioner.py; CIFAR-100's are 4-digit there).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
CLASSES = {"mnist": 10, "fashionmnist": 10, "cifar10": 10, "cifar100": 100}


def torchvision_class(name: str):
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


def _register(name: str, *, default_model: str, summary: str) -> None:
    def fetch(root: str) -> None:
        download_splits(name, root, lambda train: torchvision_class(name)(root, train=train, download=True))

    @dataset(name, n_classes=CLASSES[name], default_model=default_model, summary=summary, files=True,
             fetch=fetch, obtain=f"put {name} there or pass --download (needs network)", stats=STATS[name])
    def load(*, root: str, download: bool, **_):
        cls = torchvision_class(name)
        train, test = open_splits(name, root, lambda t: cls(root, train=t, download=download))
        return image_dataset(name, root, stats=STATS[name], n_classes=len(train.classes),
                             train_x=train.data, train_y=train.targets, test_x=test.data, test_y=test.targets,
                             augment=name.startswith("cifar"))


_register("mnist", default_model="cnn", summary="MNIST (torchvision's files)")
_register("fashionmnist", default_model="cnn", summary="Fashion-MNIST (torchvision's files)")
_register("cifar10", default_model="resnet18", summary="CIFAR-10 (torchvision's files): the paper's")
_register("cifar100", default_model="resnet18", summary="CIFAR-100 (torchvision's files): the paper's")
