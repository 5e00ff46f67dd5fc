"""Mask builders without data: ERK, random per layer, magnitude, vote; and the baselines' mask hooks."""

import numpy as np
import pytest
import torch

from ssfl_mpi import models
from ssfl_mpi.masks import erk_densities, magnitude_mask, per_layer_random, random_mask, vote_mask
from ssfl_mpi.methods import MaskContext, get
from ssfl_mpi.methods.dynamic import FedDST
from ssfl_mpi.sparse import FlatModel, n_keep
from ssfl_mpi.training import LocalSpec


def cnn_flat(seed=0):
    return FlatModel(models.build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=seed))


def test_erk_matches_the_closed_form_and_the_target():
    shapes = [(32, 1, 3, 3), (64, 32, 3, 3), (128, 256), (10, 128)]
    sizes = np.array([np.prod(s) for s in shapes])
    d = erk_densities(shapes, 0.1)
    assert np.isclose((d * sizes).sum(), 0.1 * sizes.sum())
    raw = np.array([sum(s) / np.prod(s) for s in shapes])
    free = d < 1
    # uncapped layers keep the ERK ratio sum(shape)/prod(shape) between them
    assert np.allclose(d[free] / raw[free], (d[free] / raw[free])[0])
    assert d[0] == 1.0  # the 288-weight first conv would exceed 1: it is made dense


def test_erk_at_density_one_is_dense():
    assert np.allclose(erk_densities([(8, 4), (3, 3, 2)], 1.0), 1.0)


def test_per_layer_random_keeps_floor_of_each_layer():
    gen = torch.Generator().manual_seed(0)
    kept = per_layer_random([100, 7, 50], [0.3, 0.5, 0.0], gen)
    assert [int(kept[:100].sum()), int(kept[100:107].sum()), int(kept[107:].sum())] == [30, 3, 0]


@pytest.mark.parametrize("dist", ["uniform", "layerwise", "erk"])
def test_random_masks_reach_the_target_and_depend_on_the_seed(dist):
    flat = cnn_flat()
    k = n_keep(0.2, flat.n_prunable)
    a = random_mask(flat.prunable_shapes(), k, dist, torch.Generator().manual_seed(1))
    b = random_mask(flat.prunable_shapes(), k, dist, torch.Generator().manual_seed(1))
    c = random_mask(flat.prunable_shapes(), k, dist, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    if dist == "uniform":
        assert int(a.sum()) == k
    else:  # per-layer floors lose at most one weight per layer
        assert k - len(flat.prunable_shapes()) <= int(a.sum()) <= k


def test_magnitude_mask_keeps_the_largest_absolute_values():
    w = torch.tensor([0.1, -3.0, 2.0, -0.5, 0.0])
    assert magnitude_mask(w, 2).tolist() == [False, True, True, False, False]


def test_vote_mask_orders_by_votes_then_magnitude_then_index():
    votes = np.array([3, 1, 3, 2, 2, 0])
    mag = np.array([0.1, 9.0, 0.2, -0.5, 0.4, 5.0])
    assert vote_mask(votes, mag, 3).tolist() == [True, False, True, True, False, False]
    assert vote_mask(votes, mag, 3).sum() == 3
    tie = vote_mask(np.ones(4, int), np.zeros(4), 2)
    assert tie.tolist() == [True, True, False, False]


def context(flat, clients, **kw):
    sizes = np.array([len(clients[c][1]) if c in clients else 30 for c in range(4)])
    return MaskContext(flat=flat, clients=clients, client_sizes=sizes, seed=0, density=0.3, batch_size=8, **kw)


def fake_clients(n=4, per=30):
    g = torch.Generator().manual_seed(3)
    return {c: (torch.randn(per, 1, 8, 8, generator=g), torch.randint(0, 10, (per,), generator=g))
            for c in range(n)}


def test_snip_single_is_ssfl_on_client_0_alone():
    clients = fake_clients()
    snip = get("snip-single").find_mask(context(cnn_flat(), clients))
    only0 = get("ssfl").find_mask(context(cnn_flat(), {0: clients[0]}))
    ssfl = get("ssfl").find_mask(context(cnn_flat(), clients))
    assert torch.equal(snip.kept, only0.kept)
    assert not torch.equal(snip.kept, ssfl.kept)
    assert snip.n_kept == n_keep(0.3, snip.kept.numel())


def test_magnitude_and_random_methods_need_no_data():
    flat = cnn_flat()
    ctx = context(flat, {})
    m = get("magnitude").find_mask(ctx)
    w = flat.flat[flat.prunable_idx].abs()
    assert w[m.kept].min() >= w[~m.kept].max()
    r = get("random").find_mask(ctx)
    assert r.n_kept == ctx.k


def test_prunefl_initial_mask_comes_from_client_0_trained_weights():
    clients = fake_clients()
    flat = cnn_flat()
    w0 = flat.flat.detach().clone()
    spec = LocalSpec(epochs=1, batch_size=8, lr=0.1)
    mask = get("prunefl").find_mask(context(flat, {0: clients[0]}, spec=spec))
    assert mask.n_kept == n_keep(0.3, flat.n_prunable)
    w = flat.flat.detach()
    assert not torch.equal(w, w0)  # trained on client 0
    pw = w[flat.prunable_idx]
    assert torch.all(pw[~mask.kept] == 0) and pw[mask.kept].abs().min() > 0
    # a rank without client 0 ends with the same weights once the reduction has summed them
    other = cnn_flat()
    shared = {}
    ctx = context(other, {}, spec=spec, reduce_sum_=lambda a: np.add(a, shared.setdefault(a.dtype.kind, {
        "i": mask.kept.numpy().astype(np.int64), "f": w.numpy().copy()}[a.dtype.kind]), out=a))
    mask2 = get("prunefl").find_mask(ctx)
    assert torch.equal(mask2.kept, mask.kept) and torch.equal(other.flat, w)


def test_feddst_readjust_prunes_smallest_and_regrows_inactive_by_gradient():
    flat = cnn_flat()
    x, y = fake_clients()[0]
    k = n_keep(0.3, flat.n_prunable)
    kept = random_mask(flat.prunable_shapes(), k, "uniform", torch.Generator().manual_seed(0))
    flat.flat.detach().mul_(torch.ones(flat.numel).index_fill_(0, flat.prunable_idx[~kept], 0.0))
    before = flat.flat.detach()[flat.prunable_idx].clone()
    new = FedDST.readjust(flat, kept, x, y, fraction=0.1, batch_size=8, gen=torch.Generator().manual_seed(0))
    n_change = round(0.1 * k)
    assert int(new.sum()) == k
    pruned = kept & ~new
    grown = new & ~kept
    assert int(pruned.sum()) == int(grown.sum()) == n_change
    survivors = kept & new
    assert before[pruned].abs().max() <= before[survivors].abs().min()
    after = flat.flat.detach()[flat.prunable_idx]
    assert torch.all(after[grown] == 0) and torch.equal(after[survivors], before[survivors])


def test_feddst_fraction_decays_by_cosine_to_zero():
    assert FedDST.prune_fraction(0, rounds=100, ratio=0.2) == pytest.approx(0.2)
    assert FedDST.prune_fraction(50, rounds=100, ratio=0.2) == pytest.approx(0.1)
    assert FedDST.prune_fraction(100, rounds=100, ratio=0.2) == pytest.approx(0.0)


def test_readjustment_rounds_and_the_static_methods():
    assert [r for r in range(1, 13) if get("feddst").readjusts(r, every=5)] == [5, 10]
    assert not any(get("random-clientwise").readjusts(r, every=1) for r in range(1, 5))
    for name in ("ssfl", "fedavg", "random", "magnitude", "snip-single"):
        assert get(name).rounds == "static" and get(name).shared_mask


def test_clientwise_masks_differ_per_client_at_the_target_density():
    flat = cnn_flat()
    m = get("random-clientwise")
    a = m.client_mask(flat, 0, seed=0, density=0.3, distribution="uniform")
    b = m.client_mask(flat, 1, seed=0, density=0.3, distribution="uniform")
    assert int(a.sum()) == int(b.sum()) == n_keep(0.3, flat.n_prunable)
    assert not torch.equal(a, b)
    assert torch.equal(a, m.client_mask(flat, 0, seed=0, density=0.3, distribution="uniform"))


def test_prunefl_server_keeps_top_importance():
    imp = np.array([0.5, 3.0, 0.0, 2.0])
    kept = get("prunefl").server_mask(votes=None, weights=None, importance=imp, k=2)
    assert kept.tolist() == [False, True, False, True]
