"""Local SGD against torch.optim, the mask held through training, FedAvg against a direct sum."""

import copy

import numpy as np
import torch
from torch import nn

from ssfl_mpi.aggregation import weighted_average
from ssfl_mpi.sparse import FlatModel, make_mask, n_keep, pack, topk_mask
from ssfl_mpi.training import LocalSpec, evaluate, local_train, sgd_step


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def _data(n=40):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_flat_sgd_matches_torch_sgd_with_clipping():
    spec = LocalSpec(epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=5e-4, grad_clip=0.5)
    ref = _net()
    flat = FlatModel(copy.deepcopy(ref))
    opt = torch.optim.SGD(ref.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    x, y = _data()
    buf = None
    for i in range(0, 40, 8):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x[i:i + 8]), y[i:i + 8]).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), spec.grad_clip)
        opt.step()
        flat.zero_grad()
        nn.functional.cross_entropy(flat.model(x[i:i + 8]), y[i:i + 8]).backward()
        buf = sgd_step(flat.flat.detach(), flat.grad, None, buf, spec)
    expected = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    assert torch.allclose(flat.flat, expected, atol=1e-6)


def test_pruned_weights_stay_exactly_zero_through_training():
    flat = FlatModel(_net())
    kept = topk_mask(torch.rand(flat.n_prunable, generator=torch.Generator().manual_seed(2)),
                     n_keep(0.2, flat.n_prunable))
    mask = make_mask(flat, kept)
    flat.flat.detach().mul_(mask.multiplier)
    before = flat.flat.detach().clone()
    x, y = _data()
    spec = LocalSpec(epochs=3, batch_size=8, lr=0.5, momentum=0.9, weight_decay=1e-2, grad_clip=10)
    loss = local_train(flat, x, y, spec=spec, multiplier=mask.multiplier, gen=torch.Generator().manual_seed(0))
    assert np.isfinite(loss)
    pruned = flat.prunable_idx[~kept]
    assert flat.flat[pruned].eq(0).all()
    alive = flat.prunable_idx[kept]
    assert not torch.equal(flat.flat[alive], before[alive])  # training did move the kept weights
    assert flat.grad.eq(0).all()


def test_local_train_is_deterministic_for_a_generator_seed():
    x, y = _data()
    spec = LocalSpec(epochs=2, batch_size=8, lr=0.1)
    runs = []
    for _ in range(2):
        flat = FlatModel(_net())
        local_train(flat, x, y, spec=spec, multiplier=None, gen=torch.Generator().manual_seed(7))
        runs.append(flat.flat.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_weighted_average_matches_a_direct_sum():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((4, 1000)).astype(np.float32)
    sizes = np.array([10, 30, 5, 55])
    got = weighted_average(list(torch.from_numpy(rows)), sizes)
    expected = (sizes[:, None] * rows.astype(np.float64)).sum(0) / sizes.sum()
    assert np.allclose(got.numpy(), expected, atol=1e-6)


def test_aggregate_of_packed_masked_models_keeps_pruned_zero():
    flat = FlatModel(_net())
    mask = make_mask(flat, topk_mask(torch.randn(flat.n_prunable), n_keep(0.5, flat.n_prunable)))
    x, y = _data()
    packed = []
    for k in range(3):
        model = FlatModel(_net())
        model.flat.detach().mul_(mask.multiplier)
        local_train(model, x, y, spec=LocalSpec(epochs=1, batch_size=8, lr=0.1), multiplier=mask.multiplier,
                    gen=torch.Generator().manual_seed(k))
        packed.append(pack(model.flat.detach(), mask.send_idx))
        assert packed[-1].numel() == mask.payload
    avg = weighted_average(packed, np.array([1, 2, 3]))
    out = torch.zeros(flat.numel).index_copy_(0, mask.send_idx, avg)
    assert out[flat.prunable_idx[~mask.kept]].eq(0).all()


def test_evaluate_counts_correct_predictions():
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(2))
    flat = FlatModel(net)
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 3.0]])
    acc, loss = evaluate(flat, x, torch.tensor([0, 1, 1, 1]))
    assert acc == 0.75 and loss > 0
