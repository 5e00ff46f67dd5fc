"""What every data set is once loaded (`Dataset`), and the pieces data set modules share: image
normalization, checks of arrays read from files, and the batch augmentation of training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError

DATA_SEED = 0  # the data set (digits test split, synthetic draw) does not change with --seed
# Only the tests set this: generated files in torchvision's layouts cannot match its checksums.
UNVERIFIED_ENV = "SSFL_MPI_TEST_UNVERIFIED_DATA"


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


def normalizer(stats: tuple) -> tuple:
    """(to_tensor, black) for uint8 images: ToTensor() then Normalize(mean, std) in the reference's
    operation order (N,H,W / N,H,W,C / N,C,H,W in, N,C,H,W float32 out), and a black pixel's value."""
    mean = torch.tensor(stats[0]).view(-1, 1, 1)
    std = torch.tensor(stats[1]).view(-1, 1, 1)
    channels = mean.shape[0]

    def to_tensor(raw) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(raw)).float().div_(255)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        elif x.shape[1] != channels:
            x = x.permute(0, 3, 1, 2)
        return ((x - mean) / std).contiguous()

    return to_tensor, ((torch.zeros_like(mean) - mean) / std).flatten()


def check_arrays(name: str, root: str, x, y, xt, yt, n_classes: int) -> None:
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




def open_splits(name: str, root: str, open_split) -> tuple:
    """(train, test) from torchvision's reader `open_split(train: bool)`; what goes wrong with the files
    is one line naming the data set and the folder."""
    import pickle

    try:
        return open_split(True), open_split(False)
    except RuntimeError as exc:
        if "not found" in str(exc):  # torchvision's "Dataset not found or corrupted": missing or bad checksum
            raise UsageError(f"{name} not found under {root!r}, or its files fail torchvision's checksum "
                             f"({exc}): copy the original files there or pass --download on a machine "
                             f"with network") from None
        raise UsageError(f"{name} under {root!r} is unreadable or truncated ({exc}); replace its files") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, NotImplementedError,
            pickle.UnpicklingError) as exc:  # files present but not readable in the expected layout
        raise UsageError(f"{name} under {root!r} is unreadable or truncated "
                         f"({type(exc).__name__}: {exc}); replace its files") from None


def download_splits(name: str, root: str, open_split) -> None:
    """--download: torchvision's download of both splits (`open_split(train)` with download on)."""
    import os

    try:
        os.makedirs(root, exist_ok=True)
        for train in (True, False):
            open_split(train)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError, RuntimeError: one line for all
        reason = getattr(exc, "reason", None) or exc
        raise UsageError(f"cannot download {name} into {root!r} ({type(exc).__name__}: {reason}); copy the "
                         f"files there from a machine with network") from None


def image_dataset(name: str, root: str, *, stats: tuple, n_classes: int, train_x, train_y, test_x, test_y,
                  augment: bool) -> Dataset:
    """uint8 images and labels, checked, normalized lazily per subset (the training set can be large)."""
    to_tensor, black = normalizer(stats)
    labels = np.asarray(train_y, dtype=np.int64)
    test_labels = np.asarray(test_y, dtype=np.int64)
    check_arrays(name, root, train_x, labels, test_x, test_labels, n_classes)
    shape = tuple(to_tensor(train_x[:1]).shape[1:])
    return Dataset(name, labels, n_classes, shape,
                   lambda idx: to_tensor(train_x[idx]),
                   lambda: (to_tensor(test_x), torch.as_tensor(test_labels)),
                   augment=augment, black=black)
