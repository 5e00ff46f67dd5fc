"""SynFlow's data-free mask: scores against a hand computation, its schedule, and no layer collapse."""

import numpy as np
import pytest
import torch
from torch import nn

from ssfl_mpi.config import Config
from ssfl_mpi.errors import UsageError
from ssfl_mpi.masks import magnitude_mask
from ssfl_mpi.methods import MaskContext, get
from ssfl_mpi.methods.synflow import synflow_mask
from ssfl_mpi.models import build
from ssfl_mpi.sparse import FlatModel, n_keep


def two_layer(seed=0):
    torch.manual_seed(seed)
    return FlatModel(nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)))


def test_one_step_scores_are_the_synaptic_flow_by_hand():
    flat = two_layer()
    w1, w2 = (m.weight.detach().double().abs() for m in flat.model)
    # R = 1^T |W2| |W1| 1: dR/dW1[j,i] = sum_k |W2[k,j]|, dR/dW2[k,j] = sum_i |W1[j,i]|
    by_hand = torch.cat([(w1 * w2.sum(0)[:, None]).flatten(), (w2 * w1.sum(1)[None, :]).flatten()])
    kept, scores = synflow_mask(flat.model, flat.flat.detach(), flat.prunable_idx, input_shape=(3,),
                                density=0.5, iterations=1)
    assert torch.allclose(scores, by_hand, rtol=1e-12, atol=0)
    assert int(kept.sum()) == n_keep(0.5, 20)
    assert scores[kept].min() >= scores[~kept].max()  # one step: the plain global top-k


def test_the_schedule_ends_at_k_and_pruned_weights_never_return():
    flat = FlatModel(build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=0))
    n = flat.n_prunable
    kept, scores = synflow_mask(flat.model, flat.flat.detach(), flat.prunable_idx, input_shape=(1, 8, 8),
                                density=0.1, iterations=20)
    assert int(kept.sum()) == n_keep(0.1, n)
    assert bool((scores[~kept] <= scores[kept].min()).all())
    pruned_before = scores == -1.0  # pruned in an earlier step: marked, never kept again
    assert not bool((pruned_before & kept).any()) and int(pruned_before.sum()) > 0


def test_no_layer_collapses_at_extreme_sparsity():
    """A wide first layer and a narrow last one: magnitude top-k empties the small layer first;
    SynFlow's iterative flow keeps every layer connected (the paper's point)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    flat = FlatModel(model)
    kept, _ = synflow_mask(flat.model, flat.flat.detach(), flat.prunable_idx, input_shape=(64,),
                           density=0.002, iterations=100)
    sizes = [m.weight.numel() for m in model if isinstance(m, nn.Linear)]
    per_layer = [int(part.sum()) for part in torch.split(kept, sizes)]
    assert all(c > 0 for c in per_layer), per_layer
    by_magnitude = magnitude_mask(flat.flat.detach()[flat.prunable_idx], int(kept.sum()))
    assert [int(part.sum()) for part in torch.split(by_magnitude, sizes)][1:] == [0, 0]  # collapsed


def test_find_mask_on_the_rank_of_client_0_is_shared_through_the_sum():
    flat = FlatModel(build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=0))
    cfg = Config(method="synflow", sparsity=0.8, synflow_iterations=5)
    seen = []

    def reduce_sum_(a):
        seen.append(a.copy())
        return a

    base = dict(flat=flat, client_sizes=np.ones(4), seed=0, density=0.2, batch_size=8, input_shape=(1, 8, 8),
                cfg=cfg, reduce_sum_=reduce_sum_)
    holder = get("synflow").find_mask(MaskContext(clients={0: None}, **base))
    other = get("synflow").find_mask(MaskContext(clients={1: None}, **base))  # another rank: zeros only
    assert holder.n_kept == n_keep(0.2, flat.n_prunable) and other.n_kept == 0
    assert not any(a.any() for a in seen[2:])
    assert holder.scores is not None and holder.scores.dtype == np.float32


def test_its_option_is_declared_on_the_method_and_checked():
    assert Config().synflow_iterations == 100 and "synflow_iterations" in get("synflow").options
    with pytest.raises(UsageError, match="--synflow-iterations must be >= 1"):
        Config(method="synflow", synflow_iterations=0)
    assert get("synflow").label({"method": "synflow", "synflow_iterations": 10}) == "synflow (10 steps)"
