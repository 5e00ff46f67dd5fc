"""LEAF's FEMNIST and Shakespeare (Caldas et al. 2018) from LEAF's own JSON files: natural clients
(FEMNIST's writers, Shakespeare's roles), each with its own test split."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import UsageError
from ._registry import dataset
from .base import Dataset

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
                         f"holding train/ and test/ (see docs/DATA.md for LEAF's preprocess.sh)")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    if not files:
        raise UsageError(f"{name}: no .json files in {folder!r} (run LEAF's preprocess.sh; see docs/DATA.md)")
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
                         f"preprocess.sh again; see docs/DATA.md)")
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


def load_leaf(name: str, root: str) -> Dataset:
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


def _register(name: str, *, default_model: str, summary: str) -> None:
    @dataset(name, n_classes=LEAF[name], default_model=default_model, summary=summary, files=True, natural=True,
             obtain=f"pass --data-root LEAF's data/{name}/data folder (see docs/DATA.md)")
    def load(*, root: str, **_) -> Dataset:
        return load_leaf(name, root)


_register("femnist", default_model="femnist-cnn", summary="LEAF FEMNIST: 62 classes, one client per writer")
_register("shakespeare", default_model="char-lstm", summary="LEAF Shakespeare: next character, one client per role")
