"""Data sets and models."""

import numpy as np
import pytest
import torch
from torch import nn

from ssfl_mpi import data, models
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
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in net.modules()) > 0
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    flat = FlatModel(net)
    assert flat.numel == 11_173_962
    assert len(flat.prunable) == 21  # 17 3x3 convs + 3 shortcut 1x1 convs + the classifier
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_cnn_and_mlp_shapes(shape):
    for name in ("cnn", "mlp"):
        net = models.build(name, dataset="digits", input_shape=shape, n_classes=10, seed=0)
        assert net(torch.randn(3, *shape)).shape == (3, 10)


def test_cnn_rejects_vector_inputs():
    with pytest.raises(UsageError, match="cnn needs image inputs"):
        models.build("cnn", dataset="synthetic", input_shape=(60,), n_classes=10, seed=0)
