"""The round protocol: setup on every rank, the server loop (rank 0) and the worker loop (ranks >= 1)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import comm as mpi
from . import data, models
from .aggregation import weighted_average
from .config import Config
from .errors import UsageError
from .methods import METHODS, MaskContext
from .partition import label_counts, partition
from .results import ResultWriter, check_writable
from .seeding import np_rng, sample_clients, torch_gen, torch_seed
from .sparse import FlatModel, Mask, pack, unpack
from .training import LocalSpec, evaluate, local_train

log = logging.getLogger("ssfl_mpi")

FAULT_ENV = "SSFL_MPI_TEST_FAULT"  # "RANK:ROUND": raise on that rank at that round (tests only)
META_COLUMNS = 5  # per sampled client: id, n_k, train loss, compute seconds, worker comm seconds


@dataclass
class Setup:
    """What every rank holds after setup; the mask comes after, from the method."""

    cfg: Config
    comm: mpi.Comm
    device: torch.device
    threads: int
    dataset: data.Dataset
    sizes: np.ndarray          # n_k for all K clients
    label_counts: np.ndarray   # [K, classes]
    home: np.ndarray           # home rank of each client
    clients: dict              # this rank's clients: id -> (x, y)
    test: tuple | None         # the server's test set
    model_name: str
    flat: FlatModel


def inject_fault(rank: int, r: int) -> None:
    """Test-only: an exception on one rank mid-run, to check that the whole job ends."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{rank}:{r}":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")


def home_ranks(n_clients: int, workers: int) -> np.ndarray:
    """Client k lives on rank 1 + (k mod W) for the whole run."""
    return 1 + np.arange(n_clients) % workers


def pick_threads(requested: int, ranks_on_node: int) -> int:
    if requested:
        return requested
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    cores = len(os.sched_getaffinity(0))
    if cores < (os.cpu_count() or cores):  # the launcher already bound us to our share
        return cores
    return max(1, cores // ranks_on_node)


def pick_device(requested: str, local_rank: int) -> torch.device:
    """Rank -> device: ranks on a node share its GPUs round-robin by node-local rank."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no CUDA device on this node")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(cfg: Config, comm: mpi.Comm) -> Setup:
    """Every rank runs the same setup; any bad input ends all ranks with the same message."""
    error, result = None, None
    try:
        cfg.check_world(comm.size)
        if comm.is_server:
            check_writable(cfg.out_path(), overwrite=cfg.overwrite)
        result = _setup(cfg, comm)
    except UsageError as exc:
        error = str(exc)
    comm.agree(error)
    return result


def _setup(cfg: Config, comm: mpi.Comm) -> Setup:
    threads = pick_threads(cfg.threads, comm.local_size)
    torch.set_num_threads(threads)
    device = pick_device(cfg.device, comm.local_rank)
    ds = data.load(cfg.dataset, root=cfg.data_root, download=cfg.download,
                   synthetic_alpha=cfg.synthetic_alpha, synthetic_beta=cfg.synthetic_beta)
    parts = partition(cfg.partition, ds.train_labels, n_clients=cfg.clients,
                      rng=np_rng(cfg.seed, "partition"), alpha=cfg.alpha,
                      classes_per_client=cfg.classes_per_client)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    if sizes.min() == 0:
        raise UsageError(f"partition {cfg.partition} left client {int(sizes.argmin())} without data")
    home = home_ranks(cfg.clients, comm.workers)
    clients = {k: ds.train_subset(parts[k]) for k in range(cfg.clients) if home[k] == comm.rank}
    test = ds.test_set() if comm.is_server else None
    model_name = models.resolve(cfg.model, cfg.dataset)
    net = models.build(model_name, dataset=cfg.dataset, input_shape=ds.input_shape,
                       n_classes=ds.n_classes, seed=torch_seed(cfg.seed, "init"))
    return Setup(cfg=cfg, comm=comm, device=device, threads=threads, dataset=ds, sizes=sizes,
                 label_counts=label_counts(ds.train_labels, parts, ds.n_classes), home=home,
                 clients=clients, test=test, model_name=model_name, flat=FlatModel(net, device))


def find_mask(s: Setup) -> Mask:
    cfg = s.cfg
    ctx = MaskContext(flat=s.flat, clients=s.clients, client_sizes=s.sizes, seed=cfg.seed,
                      density=cfg.density, batch_size=cfg.batch_size,
                      saliency_batches=cfg.saliency_batches, saliency_weighting=cfg.saliency_weighting,
                      reduce_max=s.comm.allreduce_max, reduce_sum_=s.comm.allreduce_sum_)
    mask = METHODS[cfg.method].find_mask(ctx)
    s.flat.flat.mul_(mask.multiplier)  # the pruned initial weights are zero from here on
    return mask


def run(cfg: Config, comm: mpi.Comm) -> Path | None:
    """One federated run. Returns the result path on the server, None on workers."""
    s = setup(cfg, comm)
    mask = find_mask(s)
    if comm.is_server:
        return Server(s, mask).run()
    Worker(s, mask).run()
    return None


class _Round:
    """What the server and the workers both derive from (seed, round)."""

    def __init__(self, s: Setup, mask: Mask, r: int):
        self.clients = sample_clients(s.cfg.seed, r, s.cfg.clients, s.cfg.clients_per_round)
        per_rank = np.bincount(s.home[self.clients], minlength=s.comm.size)
        self.model_counts = per_rank * mask.payload
        self.meta_counts = per_rank * META_COLUMNS


class Server:
    def __init__(self, s: Setup, mask: Mask):
        self.s, self.mask, self.cfg = s, mask, s.cfg
        self.global_np = pack(s.flat.flat, mask.send_idx).cpu().numpy()
        self.recv = np.empty(s.cfg.clients_per_round * mask.payload, dtype=np.float32)
        self.writer: ResultWriter | None = None

    def _attrs(self) -> dict:
        cfg, s, mask = self.cfg, self.s, self.mask
        method = METHODS[cfg.method]
        up, down = method.setup_bytes(n_clients=cfg.clients, n_prunable=s.flat.n_prunable)
        return {
            "method": cfg.method, "dataset": cfg.dataset, "model": s.model_name,
            "partition": cfg.partition, "sparsity": cfg.sparsity if method.sparse else 0.0,
            "density": mask.density, "seed": cfg.seed, "world_size": s.comm.size,
            "n_clients": cfg.clients, "clients_per_round": cfg.clients_per_round,
            "rounds": cfg.rounds, "config": cfg.to_json(), "mpi_library": mpi.library_version(),
            "n_params": s.flat.numel, "n_prunable": s.flat.n_prunable, "n_kept": mask.n_kept,
            "payload_values": mask.payload, "mask_digest": mask.digest(),
            "setup_bytes_up": up, "setup_bytes_down": down,
            "threads_per_rank": s.threads, "device": str(s.device),
        }

    def run(self) -> Path:
        self.writer = ResultWriter(self.cfg.out_path(), overwrite=self.cfg.overwrite, attrs=self._attrs())
        status = "failed"
        try:
            self.writer.write_partition(self.s.sizes, self.s.label_counts)
            if METHODS[self.cfg.method].sparse:
                self.writer.write_mask(self.mask.kept.cpu().numpy(), self.mask.layer_density(self.s.flat))
            self._loop()
            self.writer.write_model(self.s.flat.state())
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.writer.close(status)
        return self.writer.path

    def _loop(self) -> None:
        cfg, comm = self.cfg, self.s.comm
        pending = None
        for r in range(1, cfg.rounds + 1):
            rnd = _Round(self.s, self.mask, r)
            inject_fault(comm.rank, r)
            t0 = time.perf_counter()
            comm.bcast_(self.global_np)
            if pending is not None:  # evaluate round r-1's model while the workers train round r
                self._finish(pending)
            updates = comm.gatherv(np.empty(0, np.float32), rnd.model_counts, self.recv)
            meta = comm.gatherv(np.empty(0, np.float64), rnd.meta_counts).reshape(-1, META_COLUMNS)
            pending = self._aggregate(r, rnd, updates, meta)
            pending["time_round"] = time.perf_counter() - t0
        self._finish(pending)

    def _aggregate(self, r: int, rnd: _Round, updates: np.ndarray, meta: np.ndarray) -> dict:
        cids = meta[:, 0].astype(np.int64)
        if not np.array_equal(np.sort(cids), rnd.clients):
            raise RuntimeError(f"round {r}: received updates of clients {sorted(cids)}, "
                               f"expected {rnd.clients.tolist()}")
        order = np.argsort(cids, kind="stable")
        rows = torch.from_numpy(updates).view(len(cids), self.mask.payload)
        sizes = meta[order, 1]
        weighted_average([rows[i] for i in order], sizes, out=torch.from_numpy(self.global_np))
        ranks = self.s.home[cids]
        compute = max(meta[ranks == q, 3].sum() for q in np.unique(ranks))
        payload_bytes = self.mask.payload * self.global_np.itemsize * len(cids)
        return {"round": r, "train_loss": float(np.dot(sizes, meta[order, 2]) / sizes.sum()),
                "bytes_up": int(updates.nbytes), "bytes_down": payload_bytes,
                "time_compute": float(compute), "time_comm": float(meta[:, 4].max())}

    def _finish(self, row: dict) -> None:
        """Evaluate the model in global_np (if due), write its row, print its line."""
        cfg, s = self.cfg, self.s
        r = row["round"]
        unpack(torch.from_numpy(self.global_np).to(s.device), self.mask.send_idx, s.flat.flat)
        acc, loss = float("nan"), float("nan")
        if r % cfg.eval_every == 0 or r == cfg.rounds:
            acc, loss = evaluate(s.flat, *s.test)
        row.update(test_accuracy=acc, test_loss=loss)
        self.writer.append_round(row)
        log.info("round %4d/%d  acc %s  loss %s  train %.4f  up %.3f MB  down %.3f MB  "
                 "comm %.3f s  round %.3f s", r, cfg.rounds,
                 "   -  " if np.isnan(acc) else f"{acc:.4f}", "   -  " if np.isnan(loss) else f"{loss:.4f}",
                 row["train_loss"], row["bytes_up"] / 1e6, row["bytes_down"] / 1e6,
                 row["time_comm"], row["time_round"])


class Worker:
    def __init__(self, s: Setup, mask: Mask):
        self.s, self.mask, self.cfg = s, mask, s.cfg
        cfg = s.cfg
        self.global_np = np.empty(mask.payload, dtype=np.float32)
        # Reused every round: at most min(M, own clients) updates go up from this rank.
        most = min(cfg.clients_per_round, len(s.clients))
        self.send = np.empty(most * mask.payload, dtype=np.float32)
        self.spec = LocalSpec(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                              momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              grad_clip=cfg.grad_clip, augment=s.dataset.augment)
        # A dense method needs no multiply: nothing is pruned.
        self.multiplier = mask.multiplier if METHODS[cfg.method].sparse else None

    def run(self) -> None:
        for r in range(1, self.cfg.rounds + 1):
            inject_fault(self.s.comm.rank, r)
            self._round(r, _Round(self.s, self.mask, r))

    def _round(self, r: int, rnd: _Round) -> None:
        s, comm, payload = self.s, self.s.comm, self.mask.payload
        mine = [int(c) for c in rnd.clients if s.home[c] == comm.rank]
        comm.reset_timer()
        comm.bcast_(self.global_np)
        global_t = torch.from_numpy(self.global_np).to(s.device)
        send = self.send[: len(mine) * payload]
        send_t = torch.from_numpy(send)
        meta = np.zeros((len(mine), META_COLUMNS), dtype=np.float64)
        for i, cid in enumerate(mine):
            t0 = time.perf_counter()
            unpack(global_t, self.mask.send_idx, s.flat.flat)
            x, y = s.clients[cid]
            loss = local_train(s.flat, x, y, spec=self.spec, multiplier=self.multiplier,
                               gen=torch_gen(self.cfg.seed, "shuffle", cid, r))
            out = send_t[i * payload: (i + 1) * payload]
            if s.device.type == "cpu":
                pack(s.flat.flat, self.mask.send_idx, out=out)
            else:
                out.copy_(pack(s.flat.flat, self.mask.send_idx))
            meta[i, :4] = cid, len(y), loss, time.perf_counter() - t0
        comm.gatherv(send, rnd.model_counts)
        meta[:, 4] = comm.reset_timer()
        comm.gatherv(meta.ravel(), rnd.meta_counts)
