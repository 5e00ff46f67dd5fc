"""What the server and the workers both derive each round (the clients, where each trains), and the
per-round exchanges both protocols share, server and worker side together: client metadata, memory,
and the workers' loop over rounds."""

from __future__ import annotations

import numpy as np

from . import comm as mpi
from .errors import Interrupted
from .lifecycle import peak_rss_mb
from .placement import place
from .run_setup import Setup
from .seeding import sample_clients

# What a worker reports per sampled client besides its update: named fields of one float64 record,
# gathered as plain float64 (the record is its own MPI layout; see send_meta / gather_meta).
META = np.dtype([("client", "<f8"), ("n_samples", "<f8"), ("loss", "<f8"), ("compute_s", "<f8"),
                 ("comm_s", "<f8"), ("pack_s", "<f8")])
META_COLUMNS = len(META.names)


def new_meta(n: int) -> np.ndarray:
    return np.zeros(n, dtype=META)


def send_meta(comm: mpi.Comm, meta: np.ndarray, plan: "RoundPlan") -> None:
    comm.gatherv(meta.view(np.float64).ravel(), plan.meta_counts)


def gather_meta(comm: mpi.Comm, plan: "RoundPlan", own: np.ndarray | None = None) -> np.ndarray:
    """On the server: every rank's records, its own (when it trains clients too) first."""
    mine = own.view(np.float64).ravel() if own is not None else np.empty(0, np.float64)
    return comm.gatherv(mine, plan.meta_counts).view(META)


class RoundPlan:
    """What the server and the workers both derive from (seed, round)."""

    def __init__(self, s: Setup, r: int, payload: int = 0):
        cfg = s.cfg
        self.r = r
        self.clients = sample_clients(cfg.seed, r, cfg.clients, cfg.clients_per_round)
        self.ranks = place(cfg.placement, self.clients, sizes=s.sizes, batch_size=cfg.batch_size,
                           epochs=cfg.local_epochs, workers=s.comm.workers, server=cfg.server_trains)
        self.rank_of = dict(zip(self.clients.tolist(), self.ranks.tolist()))
        self.per_rank = np.bincount(self.ranks, minlength=s.comm.size)
        self.model_counts = self.per_rank * payload
        self.meta_counts = self.per_rank * META_COLUMNS

    def mine(self, s: Setup) -> list[int]:
        """This rank's clients of the round, in client-id order; visitors from last round that do
        not come again are let go."""
        mine = [int(c) for c, q in zip(self.clients, self.ranks) if q == s.comm.rank]
        s.forget_visitors(mine)
        return mine

    def scatter_order(self) -> np.ndarray:
        """Positions of the round's clients in rank order (client-id order within a rank)."""
        return np.argsort(self.ranks, kind="stable")


def stop_agreed(s: Setup, r: int) -> bool:
    """The round boundary before round r, on every rank: whether any rank was told to stop."""
    return s.comm.any_(s.stop.set)


def worker_rounds(s: Setup, start: int, round_) -> None:
    """A worker's loop over rounds start..R: `round_(r)` each, after the round-boundary stop
    agreement. The round's MPI time starts before that agreement: a worker that finished early
    waits in it for the slowest one (the Gatherv before it returns at once)."""
    for r in range(start, s.cfg.rounds + 1):
        s.comm.reset_timer()
        if stop_agreed(s, r):
            raise Interrupted
        round_(r)


def report_rss(comm: mpi.Comm) -> None:
    """A worker's half of the per-round memory gather in `ServerBase._round_row`."""
    comm.gatherv(np.array([peak_rss_mb()]), np.ones(comm.size, dtype=np.int64))
