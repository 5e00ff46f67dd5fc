"""LEAF FEMNIST and Shakespeare from files in LEAF's exact layout: loading, the natural partition,
the LEAF models, and one-line errors for what a user can get wrong."""

import json

import numpy as np
import pytest
import torch

from ssfl_mpi.config import Config
from ssfl_mpi.data import LEAF_LETTERS, load
from ssfl_mpi.errors import UsageError
from ssfl_mpi.models import build
from ssfl_mpi.partition import partition
from ssfl_mpi.sparse import FlatModel

from .datagen import write_leaf


@pytest.fixture(scope="module")
def femnist(tmp_path_factory):
    return write_leaf("femnist", tmp_path_factory.mktemp("femnist"), writers=230, seed=1)


def test_femnist_loads_every_writer_with_its_own_test_split(femnist):
    files = sorted((femnist / "train").glob("*.json"))
    assert len(files) == 3  # at most 100 users a file, as LEAF writes them
    raw = {}
    for split in ("train", "test"):
        for f in sorted((femnist / split).glob("*.json")):
            d = json.loads(f.read_text())
            assert set(d) == {"users", "num_samples", "user_data"}
            for u, n in zip(d["users"], d["num_samples"]):
                raw.setdefault(u, {})[split] = n
    ds = load("femnist", root=str(femnist), download=False)
    assert ds.n_classes == 62 and ds.input_shape == (1, 28, 28)
    assert ds.group_names == tuple(sorted(raw)) and len(ds.group_names) == 230
    counts = np.bincount(ds.train_groups, minlength=230)
    assert counts.tolist() == [raw[u]["train"] for u in ds.group_names]
    assert np.bincount(ds.test_groups, minlength=230).tolist() == [raw[u]["test"] for u in ds.group_names]
    x, _ = ds.train_subset(np.arange(3))
    assert x.shape == (3, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_natural_partition_is_one_client_per_writer(femnist):
    ds = load("femnist", root=str(femnist), download=False)
    parts = partition("natural", ds.train_labels, n_clients=230, rng=np.random.default_rng(0), groups=ds.train_groups)
    assert [len(p) for p in parts] == np.bincount(ds.train_groups).tolist()
    for k, p in enumerate(parts):
        assert (ds.train_groups[p] == k).all()
    first = partition("natural", ds.train_labels, n_clients=10, rng=np.random.default_rng(0), groups=ds.train_groups)
    assert all(np.array_equal(a, b) for a, b in zip(first, parts[:10]))
    with pytest.raises(UsageError, match="only 230 natural clients"):
        partition("natural", ds.train_labels, n_clients=231, rng=np.random.default_rng(0), groups=ds.train_groups)
    with pytest.raises(UsageError, match="needs a data set with natural clients"):
        partition("natural", ds.train_labels, n_clients=5, rng=np.random.default_rng(0))


def test_shakespeare_maps_lines_to_leafs_80_symbols(tmp_path):
    root = write_leaf("shakespeare", tmp_path, writers=12)
    d = json.loads(next((root / "train").glob("*.json")).read_text())
    assert "hierarchies" in d
    user = d["users"][0]
    ds = load("shakespeare", root=str(root), download=False)
    assert len(LEAF_LETTERS) == 80 == ds.n_classes and ds.input_shape == (80,)
    g = ds.group_names.index(user)
    x, y = ds.train_subset(np.flatnonzero(ds.train_groups == g))
    line, nxt = d["user_data"][user]["x"][0], d["user_data"][user]["y"][0]
    assert "".join(LEAF_LETTERS[i] for i in x[0].tolist()) == line and LEAF_LETTERS[int(y[0])] == nxt


def test_leaf_models_and_prunable_lstm_weights():
    lstm = FlatModel(build("char-lstm", dataset="shakespeare", input_shape=(80,), n_classes=80, seed=0))
    names = [n for n, _ in lstm.prunable_layers()]
    assert names == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1", "head.weight"]
    assert lstm.model(torch.zeros(2, 80, dtype=torch.int64)).shape == (2, 80)
    lstm.flat.detach()[lstm.prunable_idx] = 0  # the flat buffer drives the LSTM: pruning takes effect
    assert torch.equal(lstm.model(torch.ones(1, 80, dtype=torch.int64)),
                       lstm.model(torch.zeros(1, 80, dtype=torch.int64)))
    cnn = FlatModel(build("femnist-cnn", dataset="femnist", input_shape=(1, 28, 28), n_classes=62, seed=0))
    assert [s for _, s in cnn.prunable_layers()] == [32 * 25, 64 * 32 * 25, 3136 * 2048, 2048 * 62]


@pytest.mark.parametrize("damage,message", [
    ("no_test", "no folder"),
    ("empty", "no .json files"),
    ("garbage", "is not a LEAF data file"),
    ("short_image", "not in LEAF's femnist format"),
    ("label", "labels outside 0..61"),
    ("mismatch", "has 2 inputs and 1 labels"),
    ("fraction", "a label is 3.5, not a class number"),
    ("no_users", "list no users"),
])
def test_bad_leaf_folders_are_one_line_errors(tmp_path, damage, message):
    root = write_leaf("femnist", tmp_path / "d", writers=3)
    f = next((root / "train").glob("*.json"))
    d = json.loads(f.read_text())
    u = d["users"][0]
    if damage == "no_test":
        for g in (root / "test").iterdir():
            g.unlink()
        (root / "test").rmdir()
    elif damage == "empty":
        f.unlink()
    elif damage == "garbage":
        f.write_text("{not json")
    elif damage == "short_image":
        d["user_data"][u]["x"][0] = [0.5] * 10
        f.write_text(json.dumps(d))
    elif damage == "label":
        d["user_data"][u]["y"][0] = 62
        f.write_text(json.dumps(d))
    elif damage == "fraction":  # never truncated to 3
        d["user_data"][u]["y"][0] = 3.5
        f.write_text(json.dumps(d))
    elif damage == "no_users":
        for g in (root / "train").glob("*.json"):
            g.write_text(json.dumps({"users": [], "num_samples": [], "user_data": {}}))
    else:
        d["user_data"][u] = {"x": d["user_data"][u]["x"][:2], "y": d["user_data"][u]["y"][:1]}
        f.write_text(json.dumps(d))
    before = {p: p.read_bytes() for p in root.rglob("*.json")}
    with pytest.raises(UsageError, match=message) as exc:
        load("femnist", root=str(root), download=False)
    assert "\n" not in str(exc.value)
    assert {p: p.read_bytes() for p in root.rglob("*.json")} == before


def test_leaf_config_defaults_and_refusals(tmp_path):
    cfg = Config(dataset="femnist", data_root=str(tmp_path))
    assert cfg.partition_scheme == "natural" and Config().partition_scheme == "dirichlet-balanced"
    with pytest.raises(UsageError, match="not downloadable"):
        Config(dataset="shakespeare", data_root=str(tmp_path), download=True)
    with pytest.raises(UsageError, match="is not a folder"):
        Config(dataset="femnist", data_root=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="natural clients"):
        Config(partition="natural")
