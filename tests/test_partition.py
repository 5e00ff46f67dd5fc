"""Partition invariants: every sample once, sizes, label skew against alpha."""

import numpy as np
import pytest

from ssfl_mpi.errors import UsageError
from ssfl_mpi.partition import label_counts, partition

LABELS = np.repeat(np.arange(10), 120)  # 1200 samples, 10 balanced classes


def _split(name, seed=0, **kw):
    kw.setdefault("n_clients", 20)
    return partition(name, LABELS, rng=np.random.default_rng(seed), **kw)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "dirichlet-balanced"])
def test_every_sample_exactly_once(name):
    parts = _split(name, alpha=0.3)
    together = np.concatenate(parts)
    assert len(together) == len(LABELS)
    assert np.array_equal(np.sort(together), np.arange(len(LABELS)))


@pytest.mark.parametrize("name", ["iid", "dirichlet-balanced"])
def test_balanced_sizes_remainder_to_first_clients(name):
    parts = partition(name, LABELS[:1203 - 10], n_clients=7, rng=np.random.default_rng(1), alpha=0.5)
    sizes = [len(p) for p in parts]
    n = 1193
    assert sizes == [n // 7 + (k < n % 7) for k in range(7)]


def test_pathological_classes_and_equal_counts():
    parts = _split("pathological", classes_per_client=2)
    counts = label_counts(LABELS, parts, 10)
    assert all((row > 0).sum() == 2 for row in counts)
    assert len({len(p) for p in parts}) == 1
    assert all(len(set(row[row > 0])) == 1 for row in counts)  # same count from each class
    together = np.concatenate(parts)
    assert len(np.unique(together)) == len(together)  # no sample twice


def _skew(parts):
    """Mean total-variation distance between client label distributions and the global one."""
    counts = label_counts(LABELS, parts, 10).astype(float)
    dist = counts / counts.sum(1, keepdims=True)
    return float(np.mean(0.5 * np.abs(dist - 0.1).sum(1)))


@pytest.mark.parametrize("name", ["dirichlet", "dirichlet-balanced"])
def test_label_skew_grows_as_alpha_falls(name):
    skews = [np.mean([_skew(_split(name, seed=s, alpha=a)) for s in range(3)]) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.2 and skews[2] > 0.6


def test_iid_is_close_to_uniform():
    assert _skew(_split("iid")) < 0.2


def test_same_rng_same_partition():
    a = _split("dirichlet-balanced", seed=5, alpha=0.3)
    b = _split("dirichlet-balanced", seed=5, alpha=0.3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_pathological_rejects_too_many_classes():
    with pytest.raises(UsageError, match="classes-per-client"):
        _split("pathological", classes_per_client=11)


def test_more_clients_than_samples_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot be split"):
        partition("iid", LABELS[:5], n_clients=6, rng=np.random.default_rng(0))


def test_personal_test_split_follows_training_label_counts():
    from ssfl_mpi.partition import proportional_test_split

    rng = np.random.default_rng(0)
    test_labels = rng.integers(0, 3, 600)
    train_counts = np.array([[10, 0, 5], [30, 20, 5], [0, 20, 0]])
    owner = proportional_test_split(test_labels, train_counts, np.random.default_rng(1))
    assert owner.shape == test_labels.shape and set(np.unique(owner)) <= {0, 1, 2}
    for c in range(3):
        n_c = (test_labels == c).sum()
        got = np.bincount(owner[test_labels == c], minlength=3)
        expected = train_counts[:, c] / train_counts[:, c].sum() * n_c
        assert np.all(np.abs(got - expected) < 1)  # largest-remainder rounding
    assert np.all(np.bincount(owner[test_labels == 1], minlength=3)[0] == 0)  # client 0 never saw class 1
