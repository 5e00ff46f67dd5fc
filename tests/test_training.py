"""Local SGD against torch.optim, the mask held through training, FedAvg against a direct sum."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ssfl_mpi.aggregation import weighted_average
from ssfl_mpi.sparse import FlatModel, make_mask, n_keep, pack, topk_mask
from ssfl_mpi.training import LocalSpec, evaluate, local_train, local_train_batched, sgd_step


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
        buf = sgd_step(flat.flat.detach(), flat.grad, None, buf, spec, lr=spec.lr)
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


def test_fedprox_step_adds_mu_times_the_drift_from_the_global_model():
    w = torch.tensor([1.0, 2.0, 0.0])
    anchor = torch.tensor([0.5, 2.0, 0.0])
    g = torch.tensor([0.1, 0.1, 0.0])
    spec = LocalSpec(epochs=1, batch_size=1, lr=0.1, prox_mu=2.0)
    mult = torch.tensor([1.0, 1.0, 0.0])
    sgd_step(w, g, mult, None, spec, lr=spec.lr, anchor=anchor)
    # w - lr * (g + mu (w - anchor)) = [1 - 0.1*(0.1 + 1.0), 2 - 0.1*0.1, 0]
    assert torch.allclose(w, torch.tensor([0.89, 1.99, 0.0]))


def test_fedprox_pulls_local_training_towards_the_global_model():
    x, y = _data()
    drift = {}
    for mu in (0.0, 10.0):
        flat = FlatModel(_net())
        start = flat.flat.detach().clone()
        local_train(flat, x, y, spec=LocalSpec(epochs=3, batch_size=8, lr=0.05, prox_mu=mu), multiplier=None,
                    gen=torch.Generator().manual_seed(0))
        drift[mu] = float((flat.flat - start).norm())
    assert drift[10.0] < 0.8 * drift[0.0]


def test_learning_rate_schedules():
    exp = LocalSpec(epochs=1, batch_size=1, lr=0.1, lr_schedule="exp-round", lr_decay=0.998)
    assert exp.lr_at(1, 0) == 0.1 * 0.998 and np.isclose(exp.lr_at(11, 3), 0.1 * 0.998 ** 11)
    shifted = LocalSpec(epochs=1, batch_size=1, lr=0.1, lr_schedule="exp-round-shifted", lr_decay=0.998)
    assert shifted.lr_at(1, 0) == 0.1 and np.isclose(shifted.lr_at(11, 3), 0.1 * 0.998 ** 10)
    cos = LocalSpec(epochs=1, batch_size=1, lr=0.1, lr_schedule="cosine-restarts", lr_period=10, lr_min=1e-5)
    assert cos.lr_at(7, 0) == 0.1 and np.isclose(cos.lr_at(7, 5), (0.1 + 1e-5) / 2)
    assert cos.lr_at(7, 10) == 0.1  # restart after a period
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), T_0=10, eta_min=1e-5)
    for epoch in range(25):
        assert np.isclose(cos.lr_at(3, epoch), ref.get_last_lr()[0])
        ref.optimizer.step()
        ref.step()
    assert LocalSpec(epochs=1, batch_size=1, lr=0.3).lr_at(50, 4) == 0.3


def test_grad_sq_accumulates_raw_gradients_of_pruned_weights_too():
    flat = FlatModel(_net())
    kept = torch.zeros(flat.n_prunable, dtype=torch.bool)
    kept[::2] = True
    mask = make_mask(flat, kept)
    flat.flat.detach().mul_(mask.multiplier)
    grad_sq = torch.zeros_like(flat.flat)
    x, y = _data()
    local_train(flat, x, y, spec=LocalSpec(epochs=1, batch_size=8, lr=0.1), multiplier=mask.multiplier,
                gen=torch.Generator().manual_seed(0), grad_sq=grad_sq)
    pruned = flat.prunable_idx[~kept]
    assert torch.all(grad_sq >= 0) and grad_sq[pruned].sum() > 0


def test_split_accuracy_is_the_mean_of_per_client_accuracies():
    from ssfl_mpi.training import split_accuracy

    correct = torch.tensor([True, False, True, True, False, True])
    owner = np.array([0, 0, 1, 1, 1, 3])  # client 2 has no test samples and does not count
    assert np.isclose(split_accuracy(correct, owner, 4), (0.5 + 2 / 3 + 1.0) / 3)


def _batched_case(n_clients=5, n=12, augment=False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    flat = FlatModel(net)
    kept = topk_mask(torch.rand(flat.n_prunable), n_keep(0.5, flat.n_prunable))
    mask = make_mask(flat, kept)
    flat.flat.detach().mul_(mask.multiplier)
    xs = [torch.randn(n, 3, 8, 8) for _ in range(n_clients)]
    ys = [torch.randint(0, 5, (n,)) for _ in range(n_clients)]
    spec = LocalSpec(epochs=2, batch_size=5, lr=0.05, momentum=0.9, weight_decay=5e-4, grad_clip=0.5,
                     prox_mu=0.01, augment=augment, pad_fill=torch.zeros(3) if augment else None)
    return flat, mask, xs, ys, spec


@pytest.mark.parametrize("augment", [False, True])
def test_batched_clients_take_the_steps_of_one_at_a_time_training(augment):
    """Momentum, clipping (per client), FedProx, weight decay, a last short batch, augmentation from
    each client's own generator: the same steps, equal up to float32 rounding."""
    flat, mask, xs, ys, spec = _batched_case(augment=augment)
    start = flat.flat.detach().clone()
    one, losses_one = [], []
    for c in range(len(xs)):
        flat.flat.detach().copy_(start)
        losses_one.append(local_train(flat, xs[c], ys[c], spec=spec, multiplier=mask.multiplier,
                                      gen=torch.Generator().manual_seed(c), round_=3))
        one.append(flat.flat.detach().clone())
    flat.flat.detach().copy_(start)
    w, losses = local_train_batched(flat, xs, ys, spec=spec, multiplier=mask.multiplier,
                                    gens=[torch.Generator().manual_seed(c) for c in range(len(xs))], round_=3)
    assert torch.equal(flat.flat.detach(), start)  # the model is left as it was
    assert (w - start).abs().max() > 1e-3  # it trained
    assert torch.allclose(w, torch.stack(one), atol=1e-5, rtol=0)
    assert np.allclose(losses, losses_one, atol=1e-5)
    assert not w[:, mask.multiplier == 0].any()  # pruned weights exactly zero


def test_batched_clients_must_hold_equal_sample_counts():
    flat, mask, xs, ys, spec = _batched_case()
    with pytest.raises(ValueError, match="same number of samples"):
        local_train_batched(flat, xs[:1] + [xs[1][:5]], ys[:1] + [ys[1][:5]], spec=spec, multiplier=None,
                            gens=[torch.Generator(), torch.Generator()])
