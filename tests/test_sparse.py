"""Flat parameter space, top-k, masks, pack/unpack."""

import numpy as np
import torch
from torch import nn

from ssfl_mpi.models import build
from ssfl_mpi.sparse import MASKS, FlatModel, MaskCache, dense_mask, make_mask, n_keep, pack, take, topk_mask, unpack


def _flat():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    return FlatModel(net)


def test_parameters_and_grads_are_views_of_the_flat_buffers():
    flat = _flat()
    base, gbase = flat.flat.data_ptr(), flat.grad.data_ptr()
    end = base + flat.numel * 4
    x = torch.randn(4, 1, 8, 8)
    flat.model(x).sum().backward()
    for p in flat.model.parameters():
        assert base <= p.data_ptr() < end
        assert gbase <= p.grad.data_ptr() < gbase + flat.numel * 4
    assert flat.grad.abs().sum() > 0  # backward accumulated into the flat gradient


def test_prunable_are_conv_and_linear_weights_only():
    flat = _flat()
    assert [flat.names[i] for i in flat.prunable] == ["0.weight", "3.weight"]
    assert flat.n_prunable == 2 * 9 + 3 * 72
    assert flat.n_prunable + flat.dense_idx.numel() == flat.numel


def test_topk_hand_case_with_ties_broken_by_index():
    scores = torch.tensor([3, 1, 5, 3, 3, 0, 5])
    assert topk_mask(scores, 3).tolist() == [True, False, True, False, False, False, True]
    assert topk_mask(scores, 4).tolist() == [True, False, True, True, False, False, True]
    assert topk_mask(scores, 0).sum() == 0
    assert topk_mask(scores, 7).all()


def test_topk_keeps_exactly_k_on_constant_scores():
    keep = topk_mask(torch.zeros(1000, dtype=torch.int64), 337)
    assert int(keep.sum()) == 337 and keep[:337].all()


def test_n_keep_is_floor_of_density_times_n():
    assert n_keep(0.5, 11) == 5
    assert n_keep(0.1, 100) == 10  # 0.1 * 100 is 10.000000000000002 or 9.999...: must be 10
    assert n_keep(1.0, 7) == 7
    assert n_keep(0.3, 10) == 3


def test_mask_payload_density_and_pack_unpack_round_trip():
    flat = _flat()
    kept = topk_mask(torch.randn(flat.n_prunable), n_keep(0.25, flat.n_prunable))
    mask = make_mask(flat, kept)
    n_dense = flat.numel - flat.n_prunable
    assert mask.payload == mask.n_kept + n_dense
    assert abs(mask.density - mask.n_kept / flat.n_prunable) < 1e-12
    w = flat.flat.detach() * mask.multiplier
    packed = pack(w, mask.send_idx)
    assert packed.numel() == mask.payload
    restored = unpack(packed, mask.send_idx, torch.zeros_like(w))
    assert torch.equal(restored, w)
    # pruned positions are exactly the zeros of the multiplier, dense parameters always travel
    assert torch.equal(mask.multiplier[flat.prunable_idx].bool(), kept)
    assert mask.multiplier[flat.dense_idx].eq(1).all()


def test_unpack_rejects_wrong_length():
    flat = _flat()
    mask = dense_mask(flat)
    try:
        unpack(torch.zeros(3), mask.send_idx, flat.flat.detach())
    except ValueError as exc:
        assert "packed length 3" in str(exc)
    else:
        raise AssertionError("no error")


def test_layer_density_sums_to_kept():
    flat = _flat()
    mask = make_mask(flat, topk_mask(torch.randn(flat.n_prunable), 50))
    layers = mask.layer_density(flat)
    assert sum(k for _, _, k in layers) == 50
    assert [n for n, _, _ in layers] == ["0.weight", "3.weight"]


def test_same_seed_same_initial_model():
    a = FlatModel(build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=3))
    b = FlatModel(build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=3))
    c = FlatModel(build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=4))
    assert torch.equal(a.flat, b.flat) and not torch.equal(a.flat, c.flat)
    assert np.array_equal(a.state()["0.weight"], b.state()["0.weight"])


def _reference_mask(flat, kept):
    """make_mask's meaning, written the slow obvious way."""
    travels = torch.ones(flat.numel, dtype=torch.bool)
    travels[flat.prunable_idx[~kept]] = False
    return torch.nonzero(travels).flatten(), travels.float()


def test_make_mask_matches_the_obvious_construction_and_is_cached_by_bits():
    MASKS.clear()
    flat = _flat()
    gen = torch.Generator().manual_seed(3)
    kept = torch.rand(flat.n_prunable, generator=gen) < 0.4
    m = make_mask(flat, kept)
    idx, mult = _reference_mask(flat, kept)
    assert torch.equal(m.send_idx, idx) and torch.equal(m.multiplier, mult) and torch.equal(m.kept, kept)
    before = kept.clone()
    kept[:5] = ~kept[:5]  # the caller's tensor changes after the call: the mask must not
    assert torch.equal(m.kept, before)
    assert make_mask(flat, before.clone()) is m  # same bits: the cached mask, not a rebuilt one
    other = make_mask(flat, kept)
    assert other is not m and torch.equal(other.send_idx, _reference_mask(flat, kept)[0])
    assert make_mask(_flat(), before) is m  # another model of the same layout shares it
    assert MASKS.hits == 2 and MASKS.misses == 2


def test_mask_cache_drops_least_recent_past_its_limit_but_keeps_one():
    flat = _flat()
    cache = MaskCache(limit=1)  # smaller than any mask: only the newest stays
    a = cache.get(flat, torch.ones(flat.n_prunable, dtype=torch.bool))
    b = cache.get(flat, torch.zeros(flat.n_prunable, dtype=torch.bool))
    assert len(cache.entries) == 1 and next(iter(cache.entries.values())) is b
    assert cache.get(flat, torch.ones(flat.n_prunable, dtype=torch.bool)) is not a  # rebuilt
    assert cache.misses == 3


def test_take_is_indexing():
    vec = torch.randn(1000)
    idx = torch.tensor([0, 3, 999, 17])
    assert torch.equal(take(vec, idx), vec[idx])
    assert torch.equal(pack(vec, idx), vec[idx])
