"""bench plain, the yardstick: the same clients and steps as the FedAvg run it is compared with."""

import numpy as np

from ssfl_mpi.config import Config
from ssfl_mpi.plain import plain_fedavg


def test_plain_fedavg_trains_the_runs_clients_and_steps():
    cfg = Config(method="fedavg", clients=6, clients_per_round=3, rounds=2, local_epochs=2, batch_size=16)
    row = plain_fedavg(cfg)
    from ssfl_mpi import data
    from ssfl_mpi.partition import partition
    from ssfl_mpi.seeding import np_rng, sample_clients

    ds = data.load("digits", root=".", download=False)
    parts = partition(cfg.partition_scheme, ds.train_labels, n_clients=6, rng=np_rng(0, "partition"), alpha=cfg.alpha)
    expected = sum(2 * -(-len(parts[c]) // 16) for r in (1, 2) for c in sample_clients(0, r, 6, 3))
    assert row["steps"] == expected
    assert 0 <= row["accuracy"] <= 1 and row["wall_s"] > 0 and np.isfinite(row["setup_s"])
