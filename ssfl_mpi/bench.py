"""`bench comm`: one round's model traffic (pack, Gatherv, aggregate, Bcast, unpack) per transport and
model size, in the style of the OSU micro-benchmarks; `bench scaling`: whole rounds as ranks grow."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import fields
from . import comm as mpi
from .aggregation import weighted_average
from .results import write_bench
from .seeding import np_rng
from .methods.messages import load_masked
from .sparse import MASKS, FlatModel, Mask, make_mask, pack, take, unpack

log = logging.getLogger("ssfl_mpi")

TRANSPORTS = ("packed", "dense", "coo", "bitmap", "bitmap-new", "pickle", "allreduce")
# Model sizes of the default sweep: the digits CNN, ResNet-18 (CIFAR-10), ResNet-50 (ImageNet head).
MODEL_SIZES = {"cnn-digits": 53_002, "resnet18": 11_173_962, "resnet50": 25_557_032}
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


def _stand_in(params: int) -> FlatModel:
    """A model of `params` prunable weights (one Linear row), for the message helpers' layout."""
    return FlatModel(nn.Linear(params, 1, bias=False))


def round_bitmap(comm: mpi.Comm, c: Case, kept: torch.Tensor, *, fresh: bool = False) -> tuple[int, int]:
    """The message path of changing masks (`fields`, `make_mask`, `load_masked`): values plus a
    bitmap of the mask, up and down. The server sums the clients' values in packed form per mask
    (in float32, as `dense` does) and scatters once. fresh: every mask is one the ranks have
    not seen in earlier rounds (the mask cache is cleared first): a round in which the mask changed."""
    if fresh:
        MASKS.clear()
    if "model" not in c.buffers:
        c.buffers["model"] = _stand_in(c.params)
    flat = c.buffers["model"]
    if comm.is_server:
        lengths = comm.gatherv(np.empty(0, np.int64), np.array([0] + [c.per_worker] * comm.workers))
        per_rank = np.concatenate([[0], lengths.reshape(comm.workers, c.per_worker).sum(axis=1)])
        up = comm.gatherv(np.empty(0, np.uint8), per_rank)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        groups: dict[int, tuple[Mask, list, list]] = {}
        for i, n_k in enumerate(c.sizes):
            msg = fields.decode(up[offsets[i]: offsets[i + 1]])
            mask = make_mask(flat, msg["mask"])
            group = groups.setdefault(id(mask), (mask, [], []))
            group[1].append(msg["values"])
            group[2].append(n_k)
        total = c.sizes.sum()
        parts = []
        for mask, rows, sizes in groups.values():
            part = torch.mul(rows[0], float(sizes[0] / total))
            for row, n_k in zip(rows[1:], sizes[1:]):
                part.add_(row, alpha=float(n_k / total))
            parts.append((mask, part))
        down_mask = make_mask(flat, kept)
        if len(parts) == 1 and parts[0][0] is down_mask:  # one mask version: the sum is the downlink
            values = parts[0][1]
        else:
            dense = flat.flat.detach().zero_()
            for mask, part in parts:
                dense.index_add_(0, mask.send_idx, part)
            values = take(dense, down_mask.send_idx)
        down = fields.encode({"values": fields.values(values), "mask": fields.index(kept)})
        comm.bcast_(np.array([down.size], dtype=np.int64))
        comm.bcast_(down)
        return int(lengths.sum()), down.size * len(c.sizes)
    mask = make_mask(flat, kept)
    msgs = [fields.encode({"values": fields.values(take(vec, mask.send_idx)), "mask": fields.index(kept)})
            for vec in c.clients]
    lengths = np.array([m.size for m in msgs], dtype=np.int64)
    comm.gatherv(lengths, np.array([0] + [c.per_worker] * comm.workers))
    counts = np.zeros(comm.size, dtype=np.int64)
    counts[comm.rank] = lengths.sum()
    comm.gatherv(np.concatenate(msgs), counts)
    n = comm.bcast_(np.zeros(1, dtype=np.int64))
    msg = fields.decode(comm.bcast_(np.empty(int(n[0]), dtype=np.uint8)))
    load_masked(flat, msg["values"], msg["mask"])
    return 0, 0


def round_allreduce(comm: mpi.Comm, c: Case) -> tuple[int, int]:
    """SSFL's one-time saliency aggregation: an Allreduce(SUM) of the int64 chunks of each prunable
    weight's exact sum (saliency.N_LIMBS of them)."""
    from .saliency import N_LIMBS

    buf = _buffer(c, "scores", 2 * N_LIMBS * c.params).view(np.int64)
    comm.allreduce_sum_(buf)
    return len(c.sizes) * c.params * 8 * N_LIMBS, len(c.sizes) * c.params * 8 * N_LIMBS


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


def comm_benchmark(comm: mpi.Comm, *, params: list[int], densities: list[float], clients_per_worker: int,
                   repeat: int, warmup: int, out: str, overwrite: bool) -> list[dict]:
    rows, all_samples = [], []
    if comm.size < 2:
        from .errors import UsageError
        raise UsageError("bench comm needs at least 2 ranks: mpirun -n 3 python -m ssfl_mpi bench comm")
    for size in params:
        cases = [("dense", 1.0), ("pickle", 1.0), ("allreduce", 1.0)] + [
            (t, d) for d in densities for t in ("packed", "bitmap", "bitmap-new", "coo")]
        for transport, density in cases:
            c = _make_case(comm, params=size, density=density, clients_per_worker=clients_per_worker)
            kept = torch.zeros(size, dtype=torch.bool)
            kept[c.send_idx] = True
            fn = {"packed": lambda: round_packed(comm, c, c.send_idx),
                  "dense": lambda: round_packed(comm, c, torch.arange(size)),
                  "coo": lambda: round_coo(comm, c),
                  "bitmap": lambda: round_bitmap(comm, c, kept),
                  "bitmap-new": lambda: round_bitmap(comm, c, kept, fresh=True),
                  "allreduce": lambda: round_allreduce(comm, c),
                  "pickle": lambda: round_pickle(comm, c)}[transport]
            samples, (up, down) = _time(comm, fn, repeat=repeat, warmup=warmup)
            median = float(np.median(samples))
            row = {"transport": transport, "density": density, "params": size,
                   "clients": len(c.sizes), "bytes_up": up, "bytes_down": down,
                   "median_s": median, "min_s": float(samples.min()), "max_s": float(samples.max()),
                   "mb_per_s": (up + down) / median / 1e6}
            rows.append(row)
            all_samples.append(samples)
    if comm.is_server:
        log.info("%-10s %10s %8s %11s %11s %10s %10s %10s %9s %9s", "transport", "params", "density", "MB up",
                 "MB down", "median s", "min s", "max s", "MB/s", "vs dense")
        for r in rows:
            dense = next(x["median_s"] for x in rows if x["transport"] == "dense" and x["params"] == r["params"])
            log.info("%-10s %10d %8.3f %11.2f %11.2f %10.4f %10.4f %10.4f %9.0f %9.3f", r["transport"], r["params"],
                     r["density"], r["bytes_up"] / 1e6, r["bytes_down"] / 1e6, r["median_s"], r["min_s"],
                     r["max_s"], r["mb_per_s"], r["median_s"] / dense)
        write_bench(out, rows, all_samples, overwrite=overwrite,
                    attrs={"kind": "comm", "world_size": comm.size, "repeat": repeat, "warmup": warmup,
                           "mpi_library": mpi.library_version()})
        log.info("wrote %s", out)
    return rows


def scaling_benchmark(comm: mpi.Comm, *, sizes: list[int], cfg_values: dict, out: str,
                      overwrite: bool) -> list[dict]:
    """The same job (fixed K, M, rounds) on the first n ranks of this launch, for each n in sizes."""
    from pathlib import Path

    from .config import make_config
    from .errors import UsageError
    from .results import read
    from .runtime import run

    if max(sizes) > comm.size or min(sizes) < 2:
        raise UsageError(f"bench scaling: --sizes must be in [2, {comm.size}] (ranks of this launch)",
                         collective=True)
    folder = Path(out).with_suffix("")
    rows = []
    for n in sizes:
        sub = comm.prefix(n)
        if sub is not None:
            path = folder / f"ranks{n}.h5"
            run(make_config(dict(cfg_values), {"out": str(path), "overwrite": True}), sub)
            if sub.is_server:
                r = read(path)["rounds"]
                rows.append({"ranks": n, "workers": n - 1, "median_round_s": float(np.median(r["time_round"][1:])),
                             "median_compute_s": float(np.median(r["time_compute"][1:])),
                             "median_comm_s": float(np.median(r["time_comm"][1:])),
                             "mb_per_round": float(np.mean(r["bytes_up"] + r["bytes_down"]) / 1e6)})
            sub.free()
        comm.barrier()
    if comm.is_server:
        base = rows[0]["median_round_s"]
        log.info("%6s %8s %14s %12s %10s %8s", "ranks", "workers", "round s (med)", "compute s", "comm s", "speedup")
        for r in rows:
            r["speedup"] = base / r["median_round_s"]
            log.info("%6d %8d %14.4f %12.4f %10.4f %8.2f", r["ranks"], r["workers"], r["median_round_s"],
                     r["median_compute_s"], r["median_comm_s"], r["speedup"])
        write_bench(out, rows, [np.zeros(1) for _ in rows], overwrite=overwrite,
                    attrs={"kind": "scaling", "world_size": comm.size, "config": json_dumps(cfg_values),
                           "mpi_library": mpi.library_version()})
        log.info("wrote %s", out)
    return rows


def json_dumps(values: dict) -> str:
    import json
    return json.dumps(values, sort_keys=True)


def placement_benchmark(cfg, *, ranks: list[int], sizes: np.ndarray, out: str | None, overwrite: bool) -> list[dict]:
    """The busiest worker's work over the ideal (the round's work over the workers), static
    (k mod W) against balanced (longest first) placement, mean and worst over the run's sampled
    rounds, for each launch size. Pure arithmetic on the client sample: no training."""
    from .placement import busiest_over_ideal, place, work
    from .results import write_bench
    from .seeding import sample_clients

    rounds = [sample_clients(cfg.seed, r, cfg.clients, cfg.clients_per_round) for r in range(1, cfg.rounds + 1)]
    rows = []
    for n in ranks:
        workers = n - 1
        row = {"ranks": n, "workers": workers}
        for kind in ("static", "balanced"):
            ratios = []
            for clients in rounds:
                cost = work(sizes[clients], batch_size=cfg.batch_size, epochs=cfg.local_epochs)
                placed = place(kind, clients, sizes=sizes, batch_size=cfg.batch_size, epochs=cfg.local_epochs,
                               workers=workers)
                ratios.append(busiest_over_ideal(placed, cost, workers))
            row[f"{kind}_mean"], row[f"{kind}_max"] = float(np.mean(ratios)), float(np.max(ratios))
        rows.append(row)
    log.info("busiest worker's work / ideal over %d sampled rounds (K=%d, M=%d):", cfg.rounds, cfg.clients,
             cfg.clients_per_round)
    log.info("%6s %8s %14s %14s %16s %16s", "ranks", "workers", "static mean", "static worst", "balanced mean",
             "balanced worst")
    for row in rows:
        log.info("%6d %8d %14.3f %14.3f %16.3f %16.3f", row["ranks"], row["workers"], row["static_mean"],
                 row["static_max"], row["balanced_mean"], row["balanced_max"])
    if out:
        write_bench(out, rows, [], overwrite=overwrite,
                    attrs={"kind": "placement", "config": cfg.to_json(), "client_sizes": sizes.tolist()})
    return rows


def commit_benchmark(*, params: int, density: float, rounds: int, directory: str, out: str,
                     overwrite: bool) -> list[dict]:
    """What a round's commit writes and costs for a model of `params` weights (all prunable) under a
    static mask of `density`: the result writer's own lifecycle (setup with mask and saliency, a
    round-0 checkpoint, then a row and a checkpoint of the packed values per round) in `directory`,
    per round: bytes written to disk against the checkpoint vector, and commit seconds. Two layouts:
    `split` (the writer's: bulk groups in the companion file) and `whole` (every commit rewrites the
    whole file, as before). No MPI, no training."""
    import time
    from pathlib import Path

    from .results import ROUND_FIELDS, ResultWriter, check_writable

    check_writable(Path(out), overwrite=overwrite)
    rng = np_rng(0, "sample", 0)
    kept = rng.random(params) < density
    scores = rng.random(params, dtype=np.float32)
    vector = rng.standard_normal(int(kept.sum()), dtype=np.float32)
    rows, samples = [], []
    for layout in ("split", "whole"):
        path = Path(directory) / f"bench_commit_{layout}.h5"
        w = ResultWriter(path, overwrite=True, attrs={"config": "{}"})
        try:
            w.write_partition(np.ones(10, np.int64), np.ones((10, 10), np.int64))
            w.write_mask(kept, [("w", params, int(kept.sum()))])
            w.write_saliency(scores, {})
            w.write_checkpoint({"round": 0}, vector=vector, kept=kept)
            w.settle()
            times, sizes = [], []
            for r in range(1, rounds + 1):
                row = {name: 0 for name in ROUND_FIELDS} | {"round": r}
                before, t0 = w.bytes_written, time.perf_counter()
                w.write_checkpoint(row, vector=vector, kept=kept, commit=False)
                w.append_round(row, whole=layout == "whole")
                w.settle()  # the write itself, which a run overlaps with training, is timed too
                times.append(time.perf_counter() - t0)
                sizes.append(w.bytes_written - before)
        finally:
            w.close("complete")
        path.unlink(missing_ok=True)
        per_round = float(np.median(sizes))
        rows.append({"layout": layout, "params": params, "density": density, "rounds": rounds,
                     "vector_bytes": int(vector.nbytes), "bytes_per_round": per_round,
                     "over_vector": per_round / vector.nbytes, "median_commit_s": float(np.median(times)),
                     "max_commit_s": float(np.max(times))})
        samples.append(np.array(times))
    log.info("%-6s %10s %8s %14s %14s %11s %10s", "layout", "params", "density", "vector MB", "MB per round",
             "/ vector", "commit s")
    for r in rows:
        log.info("%-6s %10d %8.3f %14.2f %14.2f %11.3f %10.4f", r["layout"], r["params"], r["density"],
                 r["vector_bytes"] / 1e6, r["bytes_per_round"] / 1e6, r["over_vector"], r["median_commit_s"])
    write_bench(out, rows, samples, overwrite=overwrite, attrs={"kind": "commit"})
    log.info("wrote %s", out)
    return rows


def batched_benchmark(*, clients: int, samples: int, epochs: int, batch_size: int, density: float,
                      threads: int, repeat: int, out: str, overwrite: bool) -> list[dict]:
    """Client updates per second on one rank: the digits CNN trained on `clients` clients of
    `samples` digits each, one at a time (local_train) against side by side (local_train_batched,
    one vmap over all of them), inside a random mask of `density`; the first batched call (vmap's
    set-up) is timed apart, and the two results are compared. No MPI."""
    import time
    from pathlib import Path

    from . import data, lifecycle, models
    from .results import check_writable
    from .seeding import torch_gen
    from .sparse import FlatModel, make_mask
    from .training import LocalSpec, local_train, local_train_batched

    check_writable(Path(out), overwrite=overwrite)
    lifecycle.keep_freed_memory()
    torch.set_num_threads(threads)
    ds = data.load("digits", root="data", download=False)
    rng = np_rng(0, "sample", 0)
    xs, ys = [], []
    for _ in range(clients):
        idx = torch.from_numpy(rng.choice(len(ds.train_labels), size=samples, replace=False))
        x, y = ds.train_subset(idx)
        xs.append(x)
        ys.append(y)
    flat = FlatModel(models.build("cnn", dataset="digits", input_shape=ds.input_shape, n_classes=ds.n_classes,
                                  seed=0))
    kept = torch.from_numpy(rng.random(flat.n_prunable) < density) if density < 1 else None
    mask = make_mask(flat, kept) if kept is not None else None
    multiplier = mask.multiplier if mask is not None else None
    if mask is not None:
        flat.flat.detach().mul_(multiplier)
    spec = LocalSpec(epochs=epochs, batch_size=batch_size, lr=0.05, grad_clip=10.0, weight_decay=5e-4)
    start = flat.flat.detach().clone()

    def gens():
        return [torch_gen(0, "shuffle", c, 1) for c in range(clients)]

    def one_at_a_time() -> torch.Tensor:
        outs = []
        for c, g in enumerate(gens()):
            flat.flat.detach().copy_(start)
            local_train(flat, xs[c], ys[c], spec=spec, multiplier=multiplier, gen=g)
            outs.append(flat.flat.detach().clone())
        flat.flat.detach().copy_(start)
        return torch.stack(outs)

    def side_by_side() -> torch.Tensor:
        return local_train_batched(flat, xs, ys, spec=spec, multiplier=multiplier, gens=gens())[0]

    t0 = time.perf_counter()
    side_by_side()
    first_call = time.perf_counter() - t0
    timings = {"one-at-a-time": [], "batched": []}
    results = {}
    for _ in range(repeat):  # interleaved, so that a change in the machine's load hits both
        for name, fn in (("one-at-a-time", one_at_a_time), ("batched", side_by_side)):
            t0 = time.perf_counter()
            results[name] = fn()
            timings[name].append(time.perf_counter() - t0)
    diff = float((results["batched"] - results["one-at-a-time"]).abs().max())
    pruned_nonzero = int((results["batched"] * (1 - multiplier)).count_nonzero()) if multiplier is not None else 0
    base = float(np.median(timings["one-at-a-time"]))
    rows = []
    for name, t in timings.items():
        median = float(np.median(t))
        rows.append({"mode": name, "clients": clients, "samples": samples, "epochs": epochs,
                     "batch_size": batch_size, "density": density, "threads": threads, "median_s": median,
                     "updates_per_s": clients / median, "speedup": base / median,
                     "first_call_s": first_call if name == "batched" else 0.0,
                     "max_abs_diff": diff if name == "batched" else 0.0,
                     "pruned_nonzero": pruned_nonzero if name == "batched" else 0})
    log.info("%-14s %8s %8s %12s %16s %8s", "mode", "clients", "samples", "median s", "updates per s", "speedup")
    for r in rows:
        log.info("%-14s %8d %8d %12.4f %16.1f %8.2f", r["mode"], r["clients"], r["samples"], r["median_s"],
                 r["updates_per_s"], r["speedup"])
    log.info("batched: first call (vmap set-up) %.2f s; largest difference from one at a time %.2e; "
             "pruned weights not zero: %d", first_call, diff, pruned_nonzero)
    write_bench(out, rows, [np.array(t) for t in timings.values()], overwrite=overwrite, attrs={"kind": "batched"})
    log.info("wrote %s", out)
    return rows


# The columns of `bench phases`: (name in the table, round field or how it is derived, unit)
PHASES = ("time_round", "time_compute", "time_compute_mean", "time_pack", "time_wait", "time_comm",
          "time_aggregate", "time_eval", "time_commit")


def phases_summary(path: str, *, out: str, overwrite: bool) -> dict:
    """Where a run's rounds went, from its result file: the median over its rounds (the first
    left out: it carries the launch's warm-up) of each timed phase, the imbalance across training
    ranks, the share of a round the workers wait, start-up, and disk bytes per commit."""
    from .results import read

    d = read(path)
    r, a = d["rounds"], d["attrs"]
    later = slice(1, None) if len(r["round"]) > 1 else slice(None)
    row = {name: float(np.median(r[name][later])) for name in PHASES}
    row.update({
        "rounds": int(len(r["round"])), "world_size": int(a["world_size"]),
        "imbalance": float(np.median(r["time_compute"][later] / r["time_compute_mean"][later])),
        "wait_share": float(np.median(r["time_wait"][later] / r["time_round"][later])),
        "startup_s": float(a["startup_s"]), "setup_s": float(a["setup_s"]),
        "disk_bytes_per_commit": float(a["disk_bytes_written"]) / max(1, int(a["commits"])),
        "wall_s": float(np.sum(r["time_round"])) + float(a["startup_s"]),
    })
    log.info("phase (median over rounds 2..%d)            seconds   share of the round", row["rounds"])
    for name, what in (("time_round", "round (server: broadcast to new model)"),
                       ("time_compute", "local training, slowest rank"),
                       ("time_compute_mean", "local training, mean rank"),
                       ("time_pack", "packing / encoding, slowest rank"),
                       ("time_wait", "workers in MPI calls (waiting), mean"),
                       ("time_aggregate", "server: checks and aggregation"),
                       ("time_eval", "server: evaluation (overlaps training)"),
                       ("time_commit", "server: commit (overlaps training)")):
        log.info("  %-42s %8.4f   %5.1f%%", what, row[name], 100 * row[name] / row["time_round"])
    log.info("  imbalance (slowest / mean rank's training)  %8.3f", row["imbalance"])
    log.info("  start-up to round 1 (rank 0)                 %8.2f s (setup %.2f s)", row["startup_s"],
             row["setup_s"])
    log.info("  disk bytes per commit                        %8.0f", row["disk_bytes_per_commit"])
    write_bench(out, [row], [np.asarray(r["time_round"], dtype=np.float64)], overwrite=overwrite,
                attrs={"kind": "phases", "run": str(path), "config": json_dumps(d["config"])})
    log.info("wrote %s", out)
    return row
