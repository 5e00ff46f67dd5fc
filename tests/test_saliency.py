"""Saliency against a hand-computed case, order-free aggregation, the SSFL mask."""

import threading

import numpy as np
import pytest
import torch
from torch import nn

from ssfl_mpi.methods import MaskContext, get
from ssfl_mpi.errors import UsageError
from ssfl_mpi.saliency import (LIMB_BITS, MAX_CLIENTS, N_LIMBS, WindowSum, check_client_count, client_saliency,
                               client_weights, limbs_to_float, normalize_limbs, to_limbs, top_chunk, topk_limbs)
from ssfl_mpi.sparse import FlatModel, n_keep, topk_mask


def _linear(w):
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w, dtype=torch.float32))
        net[0].bias.zero_()
    return FlatModel(net)


def test_saliency_hand_case():
    # logits W x = [-1, -1] -> p = [.5, .5]; dL/dz = p - e_0 = [-.5, .5]; dL/dW = outer(dz, x)
    flat = _linear([[1, 2], [3, 4]])
    x, y = torch.tensor([[1.0, -1.0]]), torch.tensor([0])
    s = client_saliency(flat, x, y, batch_size=1, n_batches=1, gen=torch.Generator().manual_seed(0))
    assert s.dtype == torch.float64
    assert torch.allclose(s, torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64))
    assert flat.grad.abs().sum() == 0  # leaves no gradient behind


def test_saliency_q_batches_uses_the_mean_gradient():
    flat = _linear([[1, 2], [3, 4]])
    x, y = torch.tensor([[1.0, -1.0], [2.0, 0.5]]), torch.tensor([0, 1])
    s2 = client_saliency(flat, x, y, batch_size=1, n_batches=2, gen=torch.Generator().manual_seed(0))
    g = torch.zeros(4)
    for i in range(2):
        flat.zero_grad()
        nn.functional.cross_entropy(flat.model(x[i:i + 1]), y[i:i + 1]).backward()
        g += flat.grad[flat.prunable_idx] / 2
    assert torch.allclose(s2, (g * flat.flat[flat.prunable_idx]).abs().double(), atol=1e-7)


def test_client_weights():
    assert np.allclose(client_weights([1, 3], "data-size"), [0.25, 0.75])
    assert np.allclose(client_weights([1, 3], "uniform"), [0.5, 0.5])


def _exact(limbs: np.ndarray, top: int) -> list:
    """The value of each entry's chunks (window top chunk `top`) as an exact Fraction."""
    from fractions import Fraction

    return [sum(Fraction(int(limbs[i, j])) * Fraction(2) ** (LIMB_BITS * (top - i)) for i in range(N_LIMBS))
            for j in range(limbs.shape[1])]


def _cut(value: float, top: int):
    """A score as the window keeps it: its bits from 2^(32 (top - 4)) up, the rest dropped."""
    from fractions import Fraction

    grid = Fraction(2) ** (LIMB_BITS * (top - N_LIMBS + 1))
    return (Fraction(value) // grid) * grid


def test_chunks_hold_every_float_down_to_128_bits_below_the_largest_exactly():
    from fractions import Fraction

    rng = np.random.default_rng(0)
    x = rng.random(300) * 2.0 ** rng.integers(-74, 1, size=300)  # 53 bits, down to 2^-75 of the max
    x[:3] = [0.0, 1.0, 2.0 ** -74]
    top = top_chunk(float(x.max()))
    assert x.max() < 2.0 ** (LIMB_BITS * (top + 1))
    assert _exact(to_limbs(x, top), top) == [Fraction(v) for v in x]
    with pytest.raises(ValueError, match="above the window"):
        to_limbs(np.array([2.0 ** 40]), top)


def test_window_sum_is_exact_and_the_same_in_any_order_and_grouping():
    """Parts of very different sizes, added in any order, on any split over ranks: the same chunks,
    and they are the exact sum of every part cut below the final window."""
    rng = np.random.default_rng(1)
    parts = [rng.random(200) * 10.0 ** rng.integers(-40, 3) for _ in range(7)]
    parts[3][:50] = 0.0

    def window(order):
        acc = WindowSum(200)
        for i in order:
            acc.add(parts[i])
        return acc

    def ranks(groups):
        accs = [window(g) for g in groups]
        top = max(a.top for a in accs if a.top is not None)
        for a in accs:
            a.align(top)
        return normalize_limbs(sum(a.total for a in accs)), top

    one, top = ranks([range(7)])
    for groups in ([reversed(range(7))], [[0, 2, 4, 6], [1, 3, 5]], [[6], [5, 0], [], [4, 3, 2, 1]],
                   [[3], [0, 1, 2, 4, 5, 6]]):
        total, t = ranks([list(g) for g in groups])
        assert t == top and np.array_equal(total, one)
    assert np.all(one[1:] < 2 ** LIMB_BITS) and np.all(one >= 0)
    exact = [sum(_cut(float(p[j]), top) for p in parts) for j in range(200)]
    assert _exact(one, top) == exact
    assert np.allclose(limbs_to_float(one, LIMB_BITS * (top + 1)), [float(v) for v in exact], rtol=1e-15, atol=0)


def test_a_window_moves_up_and_never_down():
    acc = WindowSum(3)
    acc.add(np.array([2.0 ** -100, 0.0, 1.0]))
    first = acc.top
    acc.add(np.array([2.0 ** 70, 0.0, 0.0]))
    assert acc.top > first and acc.total[:, 0].any()
    with pytest.raises(ValueError, match="below the largest"):
        acc.align(first)
    with pytest.raises(ValueError, match="finite and non-negative"):
        acc.add(np.array([1.0, -1.0, 0.0]))


def test_topk_of_limbs_ranks_exactly_and_keeps_ties_as_asked():
    x = np.array([0.5, 0.25, 0.5, 0.125, 0.5, 0.0])
    total = normalize_limbs(to_limbs(x, top_chunk(0.5)))
    assert topk_limbs(total, 2).tolist() == [True, False, True, False, False, False]  # ties: lower index
    assert topk_limbs(total, 2, ties="keep-all").tolist() == [True, False, True, False, True, False]
    assert topk_limbs(total, 4, ties="keep-all").sum() == 4 and not topk_limbs(total, 0).any()
    # values that differ only in the last limb, which a float64 cast would merge
    a = normalize_limbs(np.array([[5, 5], [0, 0], [0, 0], [0, 0], [2, 1]], dtype=np.int64))
    assert topk_limbs(a, 1).tolist() == [True, False]
    with pytest.raises(ValueError):
        topk_limbs(total, 7)


def test_exact_sum_of_5000_clients_gives_the_mask_of_the_float64_sum():
    """SSFL at 5,000 clients: order-free, and the top-k of the float64 (fsum) sum of the scores."""
    import math

    rng = np.random.default_rng(2)
    n, k_clients = 4000, 5000
    scores = rng.lognormal(-8, 3, size=(k_clients, n)) / k_clients  # p_k = 1/K, wide dynamic range
    forward, shuffled = WindowSum(n), WindowSum(n)
    for s in scores:
        forward.add(s)
    for s in scores[rng.permutation(k_clients)]:
        shuffled.add(s)
    total = normalize_limbs(forward.total)
    assert forward.top == shuffled.top and np.array_equal(total, normalize_limbs(shuffled.total))
    fsum = np.array([math.fsum(scores[:, j]) for j in range(n)])
    k = n // 2
    expected = np.zeros(n, dtype=bool)
    expected[np.argsort(-fsum, kind="stable")[:k]] = True
    assert np.array_equal(topk_limbs(total, k), expected)
    assert np.allclose(limbs_to_float(total, forward.exponent), fsum, rtol=1e-12, atol=0)


def test_the_exact_sum_states_its_bound():
    assert MAX_CLIENTS == 2 ** 31 - 1
    check_client_count(10 ** 9)
    with pytest.raises(UsageError, match="at most 2,147,483,647"):
        check_client_count(2 ** 31)
    # the bound holds: MAX_CLIENTS pieces at their largest, plus carries, stay below 2^63
    assert MAX_CLIENTS * 2 ** LIMB_BITS + MAX_CLIENTS < 2 ** 63


class ThreadCollective:
    """An in-memory allreduce over threads, summing in a different order than the callers."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n)
        self.slots = [None] * n

    def member(self, i):
        def reduce_max(v):
            self.slots[i] = v
            self.barrier.wait()
            out = max(self.slots)
            self.barrier.wait()
            return out

        def reduce_sum_(a):
            self.slots[i] = a.copy()
            self.barrier.wait()
            total = sum(reversed(self.slots))
            self.barrier.wait()
            a[:] = total
            return a
        return reduce_max, reduce_sum_


def _clients(n_clients=5):
    gen = torch.Generator().manual_seed(1)
    return {k: (torch.randn(8 + 3 * k, 6, generator=gen), torch.randint(0, 3, (8 + 3 * k,), generator=gen))
            for k in range(n_clients)}


def _net():
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net


def _mask_with_groups(groups, weighting="data-size", q=1):
    clients = _clients()
    sizes = np.array([len(clients[k][1]) for k in range(5)])
    coll = ThreadCollective(len(groups))
    masks = [None] * len(groups)

    def work(i, group):
        flat = FlatModel(_net())
        rmax, rsum = coll.member(i)
        ctx = MaskContext(flat=flat, clients={k: clients[k] for k in group}, client_sizes=sizes, seed=0,
                          density=0.3, batch_size=4, saliency_batches=q, saliency_weighting=weighting,
                          reduce_max=rmax, reduce_sum_=rsum)
        masks[i] = get("ssfl").find_mask(ctx)

    threads = [threading.Thread(target=work, args=(i, g)) for i, g in enumerate(groups)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return masks


@pytest.mark.parametrize("weighting", ["data-size", "uniform"])
def test_ssfl_mask_is_identical_for_any_grouping_of_clients(weighting):
    one = _mask_with_groups([[0, 1, 2, 3, 4]], weighting)[0]
    two = _mask_with_groups([[], [0, 2, 4], [1, 3]], weighting)  # a server with no clients + 2 workers
    three = _mask_with_groups([[0, 3], [1, 4], [2]], weighting)
    for m in two + three:
        assert torch.equal(m.kept, one.kept)
    assert one.n_kept == n_keep(0.3, one.kept.numel())


def test_ssfl_mask_is_topk_of_the_weighted_score_sum():
    clients = _clients()
    sizes = np.array([len(clients[k][1]) for k in range(5)], dtype=float)
    flat = FlatModel(_net())
    ctx = MaskContext(flat=flat, clients=clients, client_sizes=sizes.astype(int), seed=0, density=0.3,
                      batch_size=4)
    mask = get("ssfl").find_mask(ctx)
    from ssfl_mpi.seeding import torch_gen
    total = sum(sizes[k] / sizes.sum() * client_saliency(flat, *clients[k], batch_size=4, n_batches=1,
                                                         gen=torch_gen(0, "saliency", k)) for k in range(5))
    expected = topk_mask(total, n_keep(0.3, flat.n_prunable))
    assert torch.equal(mask.kept, expected)
    uniform = get("ssfl").find_mask(MaskContext(**{**ctx.__dict__, "saliency_weighting": "uniform"}))
    assert not torch.equal(uniform.kept, mask.kept)  # the weighting matters on unbalanced clients


def test_non_finite_saliency_is_a_one_line_run_error():
    from ssfl_mpi.errors import RunError

    clients = _clients()
    clients[2][0][0, 0] = float("nan")
    sizes = np.array([len(clients[k][1]) for k in range(5)])
    ctx = MaskContext(flat=FlatModel(_net()), clients=clients, client_sizes=sizes, seed=0, density=0.3,
                      batch_size=64)
    with pytest.raises(RunError, match="saliency of client 2 is not finite"):
        get("ssfl").find_mask(ctx)
