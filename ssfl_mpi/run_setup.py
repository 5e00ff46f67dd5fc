"""Setup on every rank: data, partition, model, the method's mask; what a rank holds afterwards."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import comm as mpi
from . import data, methods, models
from .config import Config
from .errors import UsageError
from .lifecycle import STOP, StopFlag
from .methods import MaskContext
from .partition import label_counts, proportional_test_split, split_for
from .placement import static_home
from .results import check_writable, claim
from .seeding import np_rng, torch_seed
from .sparse import RECURRENT_MODULES, FlatModel, Mask, n_keep
from .training import LocalSpec

log = logging.getLogger("ssfl_mpi")


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
    home: np.ndarray           # static home rank of each client (where mask discovery scores it)
    clients: dict              # this rank's home clients: id -> (x, y)
    test: tuple | None         # the server's test set
    test_owner: np.ndarray | None  # the server's: client whose personal split holds each test sample
    model_name: str
    flat: FlatModel
    method: methods.Method     # this run's own instance: whatever a method keeps lives for one run
    parts: list = field(default_factory=list)  # every client's sample indices
    stop: StopFlag = field(default_factory=lambda: STOP)
    t_setup: float = field(default_factory=time.perf_counter)  # when setup began (perf_counter)
    _visiting: dict = field(default_factory=dict)  # clients placed here this round, not at home

    def data_of(self, cid: int) -> tuple:
        """(x, y) of a client this rank trains: its home clients are held, others are materialized
        from the data set (which every rank loaded) and kept only while they keep coming here."""
        if cid in self.clients:
            return self.clients[cid]
        if cid not in self._visiting:
            self._visiting[cid] = tuple(t.to(self.device) for t in self.dataset.train_subset(self.parts[cid]))
        return self._visiting[cid]

    def forget_visitors(self, keep) -> None:
        for cid in [c for c in self._visiting if c not in keep]:
            del self._visiting[cid]


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run continues: after `round`; vector and kept on the server only."""

    path: Path
    round: int
    vector: np.ndarray | None = None
    kept: np.ndarray | None = None
    row: dict | None = None  # that round's row before evaluation
    clients: dict | None = None  # per-client state arrays the server keeps (message methods)
    rows: int = 0  # rows the file holds (the checkpointed round's is kept if it is there)


def pick_threads(requested: int, ranks_on_node: int) -> int:
    if requested:
        return requested
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        value = os.environ["SLURM_CPUS_PER_TASK"]
        if not value.strip().isdigit() or int(value) < 1:
            raise UsageError(f"SLURM_CPUS_PER_TASK={value!r} is not a positive integer: fix the job script "
                             f"or pass --threads")
        return int(value)
    cores = len(os.sched_getaffinity(0))
    if cores < (os.cpu_count() or cores):  # the launcher already bound us to our share
        return cores
    return max(1, cores // ranks_on_node)


def pick_device(requested: str, local_rank: int, local_size: int = 1) -> torch.device:
    """Rank -> device: ranks on a node share its GPUs round-robin by node-local rank (several
    ranks per GPU are supported: each has its own CUDA context and memory; say so once)."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no CUDA device on this node")
    gpus = torch.cuda.device_count()
    if local_rank == 0 and local_size > gpus:
        log.info("setup: %d ranks on this node share its %d GPU(s), up to %d per GPU (each with its own CUDA "
                 "context)", local_size, gpus, -(-local_size // gpus))
    return torch.device("cuda", local_rank % gpus)


def setup(cfg: Config, comm: mpi.Comm, *, resuming: bool = False) -> Setup:
    """Every rank runs the same setup; any bad input ends all ranks with the same message."""
    error, result = None, None
    try:
        cfg.check_world(comm.size)
        if comm.is_server:
            check_writable(cfg.out_path(), overwrite=cfg.overwrite or resuming)
            claim(cfg.out_path())
            if cfg.download and data.spec(cfg.dataset).fetch is not None:  # one rank downloads, the rest wait
                with Phase(f"download {cfg.dataset} into {cfg.data_root!r}", announce=True):
                    data.fetch(cfg.dataset, root=cfg.data_root)
    except UsageError as exc:
        error = str(exc)
    comm.agree(error)
    try:
        result = _setup(cfg, comm)
    except UsageError as exc:
        error = str(exc)
    comm.agree(error)
    return result


class Phase:
    """A setup phase on rank 0's log: a line when it starts (if it can be long) and its time."""

    def __init__(self, what: str, *, announce: bool = False):
        self.what, self.announce = what, announce

    def __enter__(self) -> "Phase":
        self.t0 = time.perf_counter()
        self.detail = ""
        if self.announce:
            log.info("setup: %s ...", self.what)
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            log.info("setup: %s%s (%.1f s)", self.what, self.detail, time.perf_counter() - self.t0)


def _setup(cfg: Config, comm: mpi.Comm) -> Setup:
    t_setup = time.perf_counter()
    threads = pick_threads(cfg.threads, comm.local_size)
    torch.set_num_threads(threads)
    device = pick_device(cfg.device, comm.local_rank, comm.local_size)
    with Phase(f"load {cfg.dataset}", announce=cfg.dataset not in ("digits", "synthetic")) as ph:
        ds = data.load(cfg.dataset, root=cfg.data_root, download=False,
                       synthetic_alpha=cfg.synthetic_alpha, synthetic_beta=cfg.synthetic_beta)
        ph.detail = f": {len(ds.train_labels)} training samples, {ds.n_classes} classes"
    with Phase(f"partition {cfg.partition_scheme} over {cfg.clients} clients") as ph:
        parts = split_for(cfg, ds)
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        if sizes.min() == 0:
            raise UsageError(f"partition {cfg.partition_scheme} left client {int(sizes.argmin())} without data")
        home = static_home(cfg.clients, comm.workers)
        # On a GPU a client's samples are copied there once, not once per minibatch.
        clients = {k: tuple(t.to(device) for t in ds.train_subset(parts[k]))
                   for k in range(cfg.clients) if home[k] == comm.rank}
        test = ds.test_set() if comm.is_server else None
        counts = label_counts(ds.train_labels, parts, ds.n_classes)
        owner = None
        if comm.is_server and cfg.partition_scheme == "natural":
            # Each client's own test samples are its writer's (role's); the test set is theirs.
            ours = ds.test_groups < cfg.clients
            test, owner = (test[0][torch.from_numpy(ours)], test[1][torch.from_numpy(ours)]), ds.test_groups[ours]
            if not len(owner):
                raise UsageError(f"{cfg.dataset}: the first {cfg.clients} clients have no test samples")
        elif comm.is_server:
            owner = proportional_test_split(test[1].numpy(), counts, np_rng(cfg.seed, "personal-split"))
        ph.detail = f": {sizes.min()}-{sizes.max()} samples each"
        if ds.group_names and cfg.partition_scheme == "natural":
            ph.detail += (f" (the first {cfg.clients} of {len(ds.group_names)} writers/roles; --clients "
                          f"{len(ds.group_names)} takes them all)" if cfg.clients < len(ds.group_names) else
                          f" (all {len(ds.group_names)} writers/roles)")
    model_name = models.resolve(cfg.model, cfg.dataset)
    with Phase(f"build {model_name}") as ph:
        net = models.build(model_name, dataset=cfg.dataset, input_shape=ds.input_shape,
                           n_classes=ds.n_classes, seed=torch_seed(cfg.seed, "init"))
        flat = FlatModel(net, device)
        if cfg.batch_clients > 1 and any(isinstance(m, RECURRENT_MODULES) for m in net.modules()):
            raise UsageError(f"--batch-clients: {model_name} has recurrent layers, which torch.func.vmap runs "
                             f"one client at a time (slower than --batch-clients 1)")
        method = methods.get(cfg.method)
        method.prepare_model(flat, cfg=cfg)
        ph.detail = f": {flat.numel:,} parameters, {flat.n_prunable:,} prunable, on {device}"
    if method.sparse and n_keep(cfg.density, flat.n_prunable) == 0:
        raise UsageError(f"--sparsity {cfg.sparsity} keeps 0 of the {flat.n_prunable:,} prunable weights of "
                         f"{model_name}: the model could not learn; use a sparsity below "
                         f"{1 - 1 / flat.n_prunable:.9f}")
    return Setup(cfg=cfg, comm=comm, device=device, threads=threads, dataset=ds, sizes=sizes,
                 label_counts=counts, home=home, clients=clients, test=test, test_owner=owner,
                 model_name=model_name, flat=flat, method=method, parts=parts, t_setup=t_setup)


def local_spec(cfg: Config, dataset: data.Dataset) -> LocalSpec:
    return LocalSpec(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, augment=dataset.augment,
                     pad_fill=dataset.pad_fill(cfg.augment_padding),
                     prox_mu=cfg.prox_mu, lr_schedule=cfg.lr_schedule, lr_decay=cfg.lr_decay,
                     lr_period=cfg.lr_period, lr_min=cfg.lr_min)


def find_mask(s: Setup) -> Mask:
    cfg = s.cfg
    spec = local_spec(cfg, s.dataset)
    augment = None
    if cfg.saliency_input == "augmented" and spec.augment:
        augment = lambda x, gen: data.augment_batch(x, gen, fill=spec.pad_fill)  # noqa: E731
    ctx = MaskContext(flat=s.flat, clients=s.clients, client_sizes=s.sizes, seed=cfg.seed,
                      density=cfg.density, batch_size=cfg.batch_size,
                      saliency_batches=cfg.saliency_batches, saliency_weighting=cfg.saliency_weighting,
                      saliency_score=cfg.saliency_score, saliency_augment=augment, topk_ties=cfg.topk_ties,
                      mask_distribution=cfg.mask_distribution, spec=spec,
                      input_shape=tuple(s.dataset.input_shape), cfg=cfg,
                      reduce_max=s.comm.allreduce_max, reduce_sum_=s.comm.allreduce_sum_)
    method = s.method
    with Phase(f"{cfg.method} mask on {s.comm.workers} worker rank(s)", announce=method.long_setup) as ph:
        mask = method.find_mask(ctx)
        ph.detail = f": {mask.n_kept:,} of {s.flat.n_prunable:,} prunable weights kept (density {mask.density:.4f})"
    if method.sparse and mask.n_kept > ctx.k:  # SSFL's --topk-ties keep-all: ties at the k-th score kept
        log.warning("setup: %s kept %d weights beyond the k = %d asked for (tied with the k-th score; density "
                    "%.4f instead of %.4f)", cfg.method, mask.n_kept - ctx.k, ctx.k, mask.density, cfg.density)
    s.flat.flat.mul_(mask.multiplier)  # the pruned initial weights are zero from here on
    return mask
