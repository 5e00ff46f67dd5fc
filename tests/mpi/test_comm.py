"""Under mpirun (any number of ranks >= 2): the comm layer and an in-process run.

Asserts are collective (all_ok), so a failure on one rank fails every rank instead of hanging
the others in their next collective.
"""

import numpy as np
import pytest
from mpi4py import MPI

from ssfl_mpi.comm import Comm
from ssfl_mpi.config import Config
from ssfl_mpi.errors import UsageError
from ssfl_mpi.results import read
from ssfl_mpi.runtime import run, setup, find_mask

WORLD = MPI.COMM_WORLD


def all_ok(cond: bool, what: str) -> None:
    oks = WORLD.allgather(bool(cond))
    assert all(oks), f"{what}: failed on ranks {[r for r, ok in enumerate(oks) if not ok]}"


@pytest.fixture()
def comm():
    c = Comm()
    yield c
    c.free()


@pytest.fixture()
def shared_tmp(tmp_path):
    from pathlib import Path
    return Path(WORLD.bcast(str(tmp_path), root=0))


def test_gatherv_collects_variable_counts_in_rank_order(comm):
    counts = np.arange(comm.size) * 3
    send = np.full(counts[comm.rank], comm.rank, dtype=np.float32)
    recv = comm.gatherv(send, counts)
    if comm.is_server:
        expected = np.concatenate([np.full(3 * r, r, dtype=np.float32) for r in range(comm.size)])
        all_ok(np.array_equal(recv, expected), "gatherv")
    else:
        all_ok(recv is None, "gatherv on a worker")
    all_ok(comm.seconds > 0, "gatherv time accounted")


def test_scatterv_hands_each_rank_its_piece(comm):
    counts = np.arange(comm.size, dtype=np.int64) + 1
    send = np.concatenate([np.full(c, r, dtype=np.uint8) for r, c in enumerate(counts)]) if comm.is_server else None
    got = comm.scatterv(send, counts, dtype=np.uint8)
    all_ok(np.array_equal(got, np.full(comm.rank + 1, comm.rank, dtype=np.uint8)), "scatterv")


def test_gatherv_refuses_a_send_size_that_differs_from_the_protocol(comm):
    counts = np.ones(comm.size, dtype=np.int64)
    with pytest.raises(ValueError, match="expects 1"):
        comm.gatherv(np.zeros(2, np.float32), counts)
    WORLD.Barrier()


def test_bcast_and_integer_allreduce(comm):
    buf = np.arange(5, dtype=np.float32) if comm.is_server else np.zeros(5, np.float32)
    comm.bcast_(buf)
    all_ok(np.array_equal(buf, np.arange(5, dtype=np.float32)), "bcast")
    a = np.full(4, 2 ** 60 // comm.size, dtype=np.int64) + comm.rank
    comm.allreduce_sum_(a)
    all_ok(np.all(a == (2 ** 60 // comm.size) * comm.size + sum(range(comm.size))), "int64 allreduce")
    all_ok(comm.allreduce_max(float(comm.rank)) == comm.size - 1, "max allreduce")


def test_agree_raises_the_same_error_on_every_rank(comm):
    with pytest.raises(UsageError, match="rank 1 is unhappy") as info:
        comm.agree("rank 1 is unhappy" if comm.rank == 1 else None)
    assert info.value.collective
    comm.agree(None)  # no error anywhere: returns on every rank


def test_setup_error_on_the_server_only_is_agreed(comm, shared_tmp):
    out = shared_tmp / "exists.h5"
    if comm.is_server:
        out.write_bytes(b"x")
    WORLD.Barrier()
    with pytest.raises(UsageError, match="exists"):
        setup(Config(clients=4, clients_per_round=2, rounds=1, out=str(out)), comm)


def test_in_process_run_keeps_pruned_weights_zero_on_every_rank(comm, shared_tmp):
    cfg = Config(clients=4, clients_per_round=3, rounds=2, local_epochs=1, sparsity=0.8, threads=1,
                 out=str(shared_tmp / "run.h5"))
    s = setup(cfg, comm)
    mask = find_mask(s)
    pruned = s.flat.prunable_idx[~mask.kept]
    all_ok(s.flat.flat[pruned].eq(0).all(), "pruned initial weights are zero")
    digests = WORLD.allgather(mask.digest())
    all_ok(len(set(digests)) == 1, "same mask on every rank without a broadcast")
    comm2 = Comm()
    path = run(cfg.__class__(**{**cfg.to_dict(), "out": str(shared_tmp / "run2.h5")}), comm2)
    comm2.free()
    if comm.is_server:
        r = read(path)
        model = np.concatenate([r["model"][n].ravel() for n in r["mask"]["layers"]["name"].astype(str)])
        all_ok(np.all(model[~r["mask"]["flat"]] == 0) and r["attrs"]["status"] == "complete", "result")
        all_ok(abs(r["attrs"]["density"] - 0.2) < 1e-3, "density")
    else:
        all_ok(True, "result")
        all_ok(True, "density")


@pytest.mark.parametrize("fresh", [False, True])
def test_bench_bitmap_round_delivers_the_weighted_average_inside_the_mask(comm, fresh):
    """bench comm's message transport moves the right numbers: every worker ends the round with
    the n_k-weighted mean of the clients' kept values and zeros elsewhere, cached mask or not."""
    import torch

    from ssfl_mpi.bench import _make_case, round_bitmap

    c = _make_case(comm, params=5000, density=0.3, clients_per_worker=2)
    kept = torch.zeros(5000, dtype=torch.bool)
    kept[c.send_idx] = True
    for _ in range(2):  # the second round finds the mask in the cache (unless fresh)
        round_bitmap(comm, c, kept, fresh=fresh)
    vectors = comm.gather_object([v.numpy() for v in c.clients])
    expected = None
    if comm.is_server:
        rows = [v for rank_rows in vectors[1:] for v in rank_rows]
        expected = sum(n / c.sizes.sum() * v.astype(np.float64) for v, n in zip(rows, c.sizes))
        expected[~kept.numpy()] = 0
    expected = comm.bcast_object(expected)
    if comm.is_server:
        all_ok(True, "server")
    else:
        model = c.buffers["model"].flat.detach().numpy()
        all_ok(np.allclose(model, expected, atol=1e-5) and not model[~kept.numpy()].any(), "bitmap round")
