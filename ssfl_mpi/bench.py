"""`bench comm`: one round's model traffic (pack, Gatherv, aggregate, Bcast, unpack) per transport."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from . import comm as mpi
from .aggregation import weighted_average
from .results import write_bench
from .seeding import np_rng
from .sparse import pack, unpack

log = logging.getLogger("ssfl_mpi")

TRANSPORTS = ("packed", "dense", "coo", "pickle")
N_TENSORS = 62  # ResNet-18 has 62 parameter tensors: the pickled baseline sends that many


@dataclass
class Case:
    """The state of one (transport, density) case on one rank."""

    params: int
    send_idx: torch.Tensor     # sorted kept positions
    clients: list              # this worker's client vectors (float32 [params])
    flat: torch.Tensor         # the model buffer the round writes into
    buffers: dict              # send/receive buffers reused across rounds, as the runtime does
    sizes: np.ndarray          # n_k of every client in the round, client order
    per_worker: int            # clients on each worker rank


def _make_case(comm: mpi.Comm, *, params: int, density: float, clients_per_worker: int) -> Case:
    rng = np_rng(0, "sample", 0)
    keep = int(round(density * params))
    send_idx = torch.from_numpy(np.sort(rng.choice(params, size=keep, replace=False)).astype(np.int64))
    clients = []
    if not comm.is_server:
        gen = torch.Generator().manual_seed(comm.rank)
        clients = [torch.randn(params, generator=gen) for _ in range(clients_per_worker)]
    sizes = np.arange(1, comm.workers * clients_per_worker + 1, dtype=np.float64)
    return Case(params=params, send_idx=send_idx, clients=clients, flat=torch.zeros(params), buffers={},
                sizes=sizes, per_worker=clients_per_worker)


def _state_dict(flat: torch.Tensor) -> dict:
    """The flat vector as a state_dict of N_TENSORS tensors with their own storage.

    Cloned because pickling a view serializes its whole base storage: 62 views of one 44 MB
    buffer pickle to 2.7 GB (measured), which no real state_dict does.
    """
    return {f"p{i}": t.clone() for i, t in enumerate(torch.tensor_split(flat, N_TENSORS))}


def _buffer(c: Case, name: str, n: int) -> np.ndarray:
    buf = c.buffers.get(name)
    if buf is None or buf.size < n:
        buf = c.buffers[name] = np.empty(n, dtype=np.float32)
    return buf[:n]


def round_packed(comm: mpi.Comm, c: Case, payload_idx: torch.Tensor) -> tuple[int, int]:
    """Values only under the fixed mask: the SSFL transport (dense: payload_idx is everything)."""
    p = payload_idx.numel()
    counts = np.array([0] + [c.per_worker * p] * comm.workers)
    dense = p == c.params
    if comm.is_server:
        down = _buffer(c, "down", p)
        recv = comm.gatherv(np.empty(0, np.float32), counts, _buffer(c, "recv", int(counts.sum())))
        rows = torch.from_numpy(recv).view(-1, p)
        weighted_average(list(rows), c.sizes, out=torch.from_numpy(down))
        comm.bcast_(down)
    elif dense and len(c.clients) == 1:
        # A dense client sends straight from its model buffer and receives into it: no copies.
        comm.gatherv(c.clients[0].numpy(), counts)
        comm.bcast_(c.flat.numpy())
    else:
        send = _buffer(c, "send", len(c.clients) * p)
        st = torch.from_numpy(send)
        for i, vec in enumerate(c.clients):
            if dense:
                st[i * p:(i + 1) * p].copy_(vec)
            else:
                pack(vec, payload_idx, out=st[i * p:(i + 1) * p])
        comm.gatherv(send, counts)
        down = comm.bcast_(_buffer(c, "down", p))
        if dense:
            c.flat.copy_(torch.from_numpy(down))
        else:
            unpack(torch.from_numpy(down), payload_idx, c.flat)
    return int(counts.sum()) * 4, len(c.sizes) * p * 4


def round_coo(comm: mpi.Comm, c: Case) -> tuple[int, int]:
    """int32 index + float32 value per kept entry, up and down, as a changing mask must send."""
    p = c.send_idx.numel()
    idx32 = c.send_idx.to(torch.int32)
    counts = np.array([0] + [c.per_worker * 2 * p] * comm.workers)
    if comm.is_server:
        recv = comm.gatherv(np.empty(0, np.float32), counts, _buffer(c, "recv", int(counts.sum())))
        words = torch.from_numpy(recv).view(-1, 2, p)
        dense = torch.zeros(c.params)
        total = c.sizes.sum()
        for row, n_k in zip(words, c.sizes):
            idx = row[0].view(torch.int32).long()
            dense.index_add_(0, idx, row[1], alpha=float(n_k / total))
        nz = torch.nonzero(dense).flatten()  # the union of the clients' supports
        down = np.empty(2 * nz.numel(), dtype=np.float32)
        dt = torch.from_numpy(down)
        dt[: nz.numel()].view(torch.int32).copy_(nz.to(torch.int32))
        dt[nz.numel():] = dense[nz]
        n = comm.bcast_object(nz.numel())
        comm.bcast_(down)
    else:
        send = _buffer(c, "send", len(c.clients) * 2 * p)
        st = torch.from_numpy(send).view(-1, 2, p)
        for i, vec in enumerate(c.clients):
            st[i, 0].view(torch.int32).copy_(idx32)
            pack(vec, c.send_idx, out=st[i, 1])
        comm.gatherv(send, counts)
        n = comm.bcast_object(None)
        down = comm.bcast_(np.empty(2 * n, dtype=np.float32))
        dt = torch.from_numpy(down)
        c.flat.index_copy_(0, dt[:n].view(torch.int32).long(), dt[n:])
    return int(counts.sum()) * 4, len(c.sizes) * 2 * n * 4


def round_pickle(comm: mpi.Comm, c: Case) -> tuple[int, int]:
    """The anti-pattern: pickled dense state_dicts gathered and broadcast as objects."""
    gathered = comm.gather_object([_state_dict(v) for v in c.clients])
    if comm.is_server:
        dicts = [d for rank_dicts in gathered[1:] for d in rank_dicts]
        total = c.sizes.sum()
        avg = {k: sum(d[k] * float(n / total) for d, n in zip(dicts, c.sizes)) for k in dicts[0]}
        comm.bcast_object(avg)
    else:
        avg = comm.bcast_object(None)
        torch.cat(list(avg.values()), out=c.flat)
    return len(c.sizes) * c.params * 4, len(c.sizes) * c.params * 4


def _time(comm: mpi.Comm, fn, *, repeat: int, warmup: int) -> tuple[np.ndarray, tuple[int, int]]:
    samples = []
    for i in range(warmup + repeat):
        comm.barrier()
        t0 = mpi.wtime()
        nbytes = fn()
        comm.barrier()  # the round ends when the slowest rank has its model
        if i >= warmup:
            samples.append(mpi.wtime() - t0)
    return np.array(samples), nbytes


def comm_benchmark(comm: mpi.Comm, *, params: int, densities: list[float], clients_per_worker: int,
                   repeat: int, warmup: int, out: str, overwrite: bool) -> list[dict]:
    rows, all_samples = [], []
    if comm.size < 2:
        from .errors import UsageError
        raise UsageError("bench comm needs at least 2 ranks: mpirun -n 3 python -m ssfl_mpi bench comm")
    cases = [("dense", 1.0), ("pickle", 1.0)] + [(t, d) for d in densities for t in ("packed", "coo")]
    for transport, density in cases:
        c = _make_case(comm, params=params, density=density, clients_per_worker=clients_per_worker)
        fn = {"packed": lambda: round_packed(comm, c, c.send_idx),
              "dense": lambda: round_packed(comm, c, torch.arange(params)),
              "coo": lambda: round_coo(comm, c),
              "pickle": lambda: round_pickle(comm, c)}[transport]
        samples, (up, down) = _time(comm, fn, repeat=repeat, warmup=warmup)
        row = {"transport": transport, "density": density, "params": params,
               "clients": len(c.sizes), "bytes_up": up, "bytes_down": down,
               "median_s": float(np.median(samples)), "min_s": float(samples.min()),
               "max_s": float(samples.max())}
        rows.append(row)
        all_samples.append(samples)
    if comm.is_server:
        dense = next(r["median_s"] for r in rows if r["transport"] == "dense")
        log.info("%-8s %8s %12s %12s %10s %10s %10s %9s", "transport", "density", "MB up", "MB down",
                 "median s", "min s", "max s", "vs dense")
        for r in rows:
            log.info("%-8s %8.3f %12.2f %12.2f %10.4f %10.4f %10.4f %9.3f", r["transport"], r["density"],
                     r["bytes_up"] / 1e6, r["bytes_down"] / 1e6, r["median_s"], r["min_s"], r["max_s"],
                     r["median_s"] / dense)
        write_bench(out, rows, all_samples, overwrite=overwrite,
                    attrs={"kind": "comm", "world_size": comm.size, "repeat": repeat, "warmup": warmup,
                           "mpi_library": mpi.library_version()})
        log.info("wrote %s", out)
    return rows
