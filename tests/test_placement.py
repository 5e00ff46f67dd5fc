"""Which rank trains which client: longest first onto the least loaded worker, and what it buys."""

import numpy as np

from ssfl_mpi.config import PLACEMENTS
from ssfl_mpi import placement
from ssfl_mpi.placement import busiest_over_ideal, lpt, place, static_home, work


def test_lpt_known_answer_and_ties():
    clients = np.array([3, 5, 8, 9, 12])
    cost = np.array([10, 10, 4, 3, 3])
    # 3 -> rank 1, 5 -> rank 2, then 8 (4) -> the less loaded of two equal: rank 1 (lower rank)...
    assert lpt(clients, cost, 2).tolist() == [1, 2, 1, 2, 2]
    assert lpt(clients, cost, 2).tolist() == lpt(clients, cost, 2).tolist()  # deterministic
    assert lpt(clients, np.ones(5, dtype=int), 5).tolist() == [1, 2, 3, 4, 5]


def test_work_counts_minibatches_and_static_is_k_mod_w():
    assert work(np.array([16, 17, 1]), batch_size=16, epochs=2).tolist() == [2, 4, 2]
    assert static_home(5, 2).tolist() == [1, 2, 1, 2, 1]
    sizes = np.array([100] * 10)
    clients = np.array([0, 2, 4, 6, 8])  # all on rank 1 under k mod 2
    assert place("static", clients, sizes=sizes, batch_size=10, epochs=1, workers=2).tolist() == [1] * 5
    balanced = place("balanced", clients, sizes=sizes, batch_size=10, epochs=1, workers=2)
    assert sorted(np.bincount(balanced)[1:].tolist()) == [2, 3]
    cost = work(sizes[clients], batch_size=10, epochs=1)
    assert busiest_over_ideal(np.ones(5, dtype=int), cost, 2) == 2.0
    assert busiest_over_ideal(balanced, cost, 2) == 3 / 2.5


def test_balanced_placement_is_never_worse_than_static():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k, m, w = 50, 10, int(rng.integers(1, 12))
        sizes = rng.integers(5, 200, size=k)
        clients = np.sort(rng.choice(k, size=m, replace=False))
        cost = work(sizes[clients], batch_size=16, epochs=2)
        b = busiest_over_ideal(place("balanced", clients, sizes=sizes, batch_size=16, epochs=2, workers=w), cost, w)
        s = busiest_over_ideal(place("static", clients, sizes=sizes, batch_size=16, epochs=2, workers=w), cost, w)
        assert b <= s + 1e-12
        assert b <= 4 / 3 + cost.max() / (cost.sum() / w)  # LPT's bound, loosely: never far off


def test_config_lists_the_placements():
    assert PLACEMENTS == placement.PLACEMENTS
