"""Data sets and models."""

import numpy as np
import pytest
import torch
from torch import nn

from ssfl_mpi import data, models
from ssfl_mpi.data.vision import torchvision_class
from ssfl_mpi.errors import UsageError
from ssfl_mpi.sparse import FlatModel


def test_digits_fixed_split():
    a, b = data.load("digits", root="", download=False), data.load("digits", root="", download=False)
    xt, yt = a.test_set()
    assert xt.shape == (300, 1, 8, 8) and len(a.train_labels) == 1497 and a.n_classes == 10
    assert torch.equal(xt, b.test_set()[0])
    x, y = a.train_subset(np.array([0, 5, 7]))
    assert x.shape == (3, 1, 8, 8) and y.tolist() == a.train_labels[[0, 5, 7]].tolist()


def test_synthetic_is_deterministic_and_heterogeneous():
    a = data.load("synthetic", root="", download=False, synthetic_alpha=1.0, synthetic_beta=1.0)
    b = data.load("synthetic", root="", download=False, synthetic_alpha=1.0, synthetic_beta=1.0)
    assert np.array_equal(a.train_labels, b.train_labels) and a.input_shape == (60,)
    assert len(np.unique(a.train_labels)) > 3


def test_missing_torchvision_data_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cifar10 not found.*--download"):
        data.load("cifar10", root=str(tmp_path), download=False)


def test_augment_keeps_shape_and_is_seeded():
    x = torch.randn(5, 3, 32, 32)
    a = data.augment_batch(x, torch.Generator().manual_seed(0))
    b = data.augment_batch(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)


def test_resnet18_is_the_papers_variant():
    net = models.build("resnet18", dataset="cifar10", input_shape=(3, 32, 32), n_classes=10, seed=0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in net.modules()) == 20
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    names = [n for n, _ in net.named_parameters()]
    assert "layer2.0.shortcut.0.weight" in names and "linear.weight" in names  # the reference's names
    flat = FlatModel(net)
    assert flat.numel == 11_173_962
    assert len(flat.prunable) == 21  # 17 3x3 convs + 3 shortcut 1x1 convs + the classifier
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    tv = models.build("resnet18-torchvision", dataset="cifar10", input_shape=(3, 32, 32), n_classes=10, seed=0)
    assert FlatModel(tv).numel == flat.numel and isinstance(tv.maxpool, nn.Identity)


def test_torchvision_layouts_load_through_the_users_code_path(tmp_path, monkeypatch):
    from tests.datagen import write

    monkeypatch.setenv(data.UNVERIFIED_ENV, "1")
    for name, classes, shape in (("cifar10", 10, (3, 32, 32)), ("cifar100", 100, (3, 32, 32)),
                                 ("mnist", 10, (1, 28, 28)), ("fashionmnist", 10, (1, 28, 28))):
        write(name, tmp_path, n_train=120, n_test=30, seed=1)
        ds = data.load(name, root=str(tmp_path), download=False)
        assert (ds.n_classes, ds.input_shape, len(ds.train_labels)) == (classes, shape, 120), name
        x, y = ds.test_set()
        assert x.shape == (30, *shape) and y.max() < classes
        xs, ys = ds.train_subset(np.array([0, 7]))
        assert xs.shape == (2, *shape) and ys.tolist() == ds.train_labels[[0, 7]].tolist()
        assert ds.augment == name.startswith("cifar")
        # the reference pipeline, ToTensor() then Normalize(mean, std), on torchvision's own item
        import torchvision.transforms as T

        mean, std = data.STATS[name]
        tv = torchvision_class(name)(str(tmp_path), train=False)
        expected = T.Compose([T.ToTensor(), T.Normalize(mean, std)])(tv[3][0])
        assert torch.equal(x[3], expected), name


def test_generated_cifar_fails_torchvisions_checksum_without_the_test_switch(tmp_path, monkeypatch):
    from tests.datagen import write

    monkeypatch.delenv(data.UNVERIFIED_ENV, raising=False)
    write("cifar10", tmp_path, n_train=20, n_test=10)
    with pytest.raises(UsageError, match="cifar10 not found under .*checksum"):
        data.load("cifar10", root=str(tmp_path), download=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "labels", "empty-test", "truncated-idx"])
def test_damaged_data_files_are_one_line_errors(tmp_path, monkeypatch, damage):
    import pickle
    import struct

    from tests.datagen import write

    monkeypatch.setenv(data.UNVERIFIED_ENV, "1")
    if damage in ("truncated", "garbage", "labels"):
        folder = write("cifar10", tmp_path, n_train=20, n_test=10)
        batch = folder / "data_batch_2"
        if damage == "truncated":
            batch.write_bytes(batch.read_bytes()[:100])
        elif damage == "garbage":
            batch.write_bytes(b"not a pickle at all")
        else:
            entry = pickle.loads(batch.read_bytes())
            entry["labels"][0] = 10
            batch.write_bytes(pickle.dumps(entry))
        name = "cifar10"
    elif damage == "empty-test":
        folder = write("mnist", tmp_path, n_train=20, n_test=10)
        (folder / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 0, 28, 28))
        (folder / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 0))
        name = "mnist"
    else:
        folder = write("fashionmnist", tmp_path, n_train=20, n_test=10)
        images = folder / "train-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:1000])
        name = "fashionmnist"
    with pytest.raises(UsageError) as err:
        data.load(name, root=str(tmp_path), download=False)
    assert "\n" not in str(err.value) and name in str(err.value)
    assert "not found" not in str(err.value)  # present but damaged: never called missing


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_cnn_and_mlp_shapes(shape):
    for name in ("cnn", "mlp"):
        net = models.build(name, dataset="digits", input_shape=shape, n_classes=10, seed=0)
        assert net(torch.randn(3, *shape)).shape == (3, 10)


def test_cnn_rejects_vector_inputs():
    with pytest.raises(UsageError, match="cnn needs image inputs"):
        models.build("cnn", dataset="synthetic", input_shape=(60,), n_classes=10, seed=0)


def test_digits_read_without_scikit_learn_are_scikit_learns():
    from sklearn.datasets import load_digits

    from ssfl_mpi.data import digits_arrays

    images, target = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)


def test_a_model_with_buffers_is_refused_in_one_line(monkeypatch):
    """BatchNorm's running statistics are not parameters: nothing would send, average or checkpoint them."""
    monkeypatch.setitem(models.BUILDERS, "bn-cnn", lambda shape, n: nn.Sequential(
        nn.Conv2d(shape[0], 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(n)))
    with pytest.raises(UsageError, match=r"model 'bn-cnn' keeps state outside its parameters \(1\.running_mean, "
                                         r"1\.running_var, 1\.num_batches_tracked: BatchNorm") as exc:
        models.build("bn-cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=0)
    assert "\n" not in str(exc.value)
    for name in models.BUILDERS:  # every shipped model is parameters only
        if name != "bn-cnn":
            ds, shape, n = {"mlp": ("synthetic", (60,), 10), "char-lstm": ("shakespeare", (80,), 80),
                            "femnist-cnn": ("femnist", (1, 28, 28), 62), "cnn": ("digits", (1, 8, 8), 10)
                            }.get(name, ("cifar10", (3, 32, 32), 10))
            assert not list(models.build(name, dataset=ds, input_shape=shape, n_classes=n, seed=0).buffers())


def test_svhn_mat_files_load_as_torchvision_reads_them(tmp_path, monkeypatch):
    """SVHN is one module (data/svhn.py): loaded from the .mat layout, labels 10 -> 0, normalized as
    ToTensor() then Normalize() on torchvision's own item, and known to config, --help and auto."""
    import torchvision.transforms as T

    from ssfl_mpi.config import Config
    from ssfl_mpi.data.svhn import STATS, svhn_class
    from tests.datagen import write

    monkeypatch.setenv(data.UNVERIFIED_ENV, "1")
    write("svhn", tmp_path, n_train=60, n_test=20, seed=2)
    ds = data.load("svhn", root=str(tmp_path), download=False)
    assert (ds.n_classes, ds.input_shape, len(ds.train_labels), ds.augment) == (10, (3, 32, 32), 60, False)
    assert sorted(set(ds.train_labels.tolist())) == list(range(10))  # 10 became 0
    x, y = ds.test_set()
    tv = svhn_class()(str(tmp_path), split="test")
    assert y.tolist() == tv.labels.tolist()
    assert torch.equal(x[5], T.Compose([T.ToTensor(), T.Normalize(*STATS)])(tv[5][0]))
    assert data.STATS["svhn"] == STATS and models.resolve("auto", "svhn") == "resnet18"
    assert Config(dataset="svhn", data_root=str(tmp_path)).partition_scheme == "dirichlet-balanced"


def test_missing_or_damaged_svhn_files_are_one_line_errors(tmp_path, monkeypatch):
    from tests.datagen import write

    monkeypatch.delenv(data.UNVERIFIED_ENV, raising=False)
    write("svhn", tmp_path, n_train=20, n_test=10)
    with pytest.raises(UsageError, match="svhn not found under .*checksum"):  # generated: checksums differ
        data.load("svhn", root=str(tmp_path), download=False)
    monkeypatch.setenv(data.UNVERIFIED_ENV, "1")
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(UsageError, match="svhn under .* is unreadable or truncated"):
        data.load("svhn", root=str(tmp_path), download=False)


def test_every_data_set_is_registered_with_what_the_tool_needs():
    from ssfl_mpi.cli import build_parser
    from ssfl_mpi.config import Config

    assert data.names()[:2] == ("digits", "synthetic") and "svhn" in data.names()
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
               if "--dataset" in a.option_strings)
    assert tuple(run.choices) == data.names()
    for name in data.names():
        spec = data.spec(name)
        assert spec.default_model in models.names() and spec.n_classes > 1, name
        assert spec.fetch is None or spec.files, name
    with pytest.raises(UsageError, match="unknown value 'svhm'"):
        Config(dataset="svhm")
