"""Messages above 2^31 bytes through every collective the round protocols use (MPI-4 large counts:
mpi4py 4 passes counts above INT_MAX to the MPI_*_c routines of an MPI-4 library). Needs about
2.2 GB per rank at a time; all asserts are collective."""

import gc

import numpy as np
import pytest
from ssfl_mpi.comm import Comm

from .test_comm import all_ok

N = (1 << 31) + 64  # bytes: just above what an int count of MPI_BYTE can say


@pytest.fixture()
def comm():
    c = Comm()
    yield c
    c.free()
    gc.collect()


def test_gatherv_above_2gib(comm):
    counts = np.array([0] + [N if r == 1 else 8 for r in range(1, comm.size)], dtype=np.int64)
    send = np.full(counts[comm.rank], comm.rank, dtype=np.uint8)
    out = comm.gatherv(send, counts)
    del send
    ok = True
    if comm.is_server:
        ok = out.size == counts.sum() and out[0] == 1 and out[N - 1] == 1 and out[N // 2] == 1
        del out
    all_ok(ok, "gatherv of 2^31 + 64 bytes")


def test_bcast_and_scatterv_above_2gib(comm):
    buf = np.full(N, 5, dtype=np.uint8) if comm.is_server else np.zeros(N, dtype=np.uint8)
    comm.bcast_(buf)
    all_ok(buf[0] == 5 and buf[-1] == 5 and buf[N // 2] == 5, "bcast of 2^31 + 64 bytes")
    del buf
    gc.collect()
    counts = np.array([0] + [N if r == 1 else 8 for r in range(1, comm.size)], dtype=np.int64)
    send = np.full(int(counts.sum()), 9, dtype=np.uint8) if comm.is_server else None
    got = comm.scatterv(send, counts, dtype=np.uint8)
    all_ok(got.size == counts[comm.rank] and (got.size == 0 or (got[0] == 9 and got[-1] == 9)),
           "scatterv of 2^31 + 64 bytes")


def test_allreduce_above_2gib(comm):
    n = N // 8 + 1  # int64 elements: the saliency limbs' dtype
    buf = np.ones(n, dtype=np.int64)
    comm.allreduce_sum_(buf)
    all_ok(buf[0] == comm.size and buf[-1] == comm.size, "allreduce of 2^31 + 72 bytes")
