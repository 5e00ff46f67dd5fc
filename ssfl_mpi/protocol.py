"""What both round protocols share: setup on every rank, the round plan, and the server's output side."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import comm as mpi
from . import lifecycle
from . import data, models
from .config import Config
from .errors import Interrupted, RunError, UsageError
from .lifecycle import STOP, StopFlag, inject_fault, peak_rss_mb
from . import methods
from .methods import MaskContext
from .partition import label_counts, proportional_test_split, split_for
from .placement import place, static_home
from .results import ResultWriter, check_writable, claim
from .seeding import np_rng, sample_clients, torch_seed
from .sparse import RECURRENT_MODULES, FlatModel, Mask, n_keep
from .training import LocalSpec, predict, split_accuracy

log = logging.getLogger("ssfl_mpi")

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
        def augment(x, gen):
            return data.augment_batch(x, gen, fill=spec.pad_fill)
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


class ServerBase:
    """Rank 0's output side: the result file, evaluation (global and personal), progress lines.

    Subclasses run the rounds in `_loop` and hand each finished round to `_finish`.
    """

    def __init__(self, s: Setup, mask: Mask, resume: ResumePoint | None = None):
        self.s, self.mask, self.cfg = s, mask, s.cfg
        self.method = s.method
        self.writer: ResultWriter | None = None
        self.resume = resume
        self.start = resume.round + 1 if resume else 1
        self.pending: dict | None = None  # the last aggregated round, not yet evaluated and written
        self.commit_s = 0.0  # seconds of the last commit (its row and checkpoint)

    def _attrs(self) -> dict:
        cfg, s, mask = self.cfg, self.s, self.mask
        up, down = self.method.setup_bytes(n_clients=cfg.clients, n_prunable=s.flat.n_prunable, mask=mask)
        return {
            "method": cfg.method, "dataset": cfg.dataset, "model": s.model_name,
            "partition": cfg.partition_scheme, "sparsity": cfg.sparsity if self.method.sparse else 0.0,
            "density": mask.density, "seed": cfg.seed, "world_size": s.comm.size,
            "n_clients": cfg.clients, "clients_per_round": cfg.clients_per_round,
            "rounds": cfg.rounds, "config": cfg.to_json(), "mpi_library": mpi.library_version(),
            "n_params": s.flat.numel, "n_prunable": s.flat.n_prunable, "n_kept": mask.n_kept,
            "payload_values": mask.payload, "mask_digest": mask.digest(),
            "setup_bytes_up": up, "setup_bytes_down": down,
            "threads_per_rank": s.threads, "device": str(s.device),
            "malloc_keeps_freed": int(lifecycle.ALLOCATOR_TUNED),
        }

    def run(self) -> Path:
        if self.resume:
            # Committed rows up to the checkpoint stay as they are; rows after it (--checkpoint-every
            # > 1) belong to rounds that are run again.
            self.writer = ResultWriter.reopen(self.resume.path, keep_rounds=min(self.resume.rows, self.resume.round))
        else:
            self.writer = ResultWriter(self.cfg.out_path(), overwrite=self.cfg.overwrite, attrs=self._attrs())
        status = "failed"
        try:
            self.writer.write_partition(self.s.sizes, self.s.label_counts)
            self._write_mask()
            if self.mask.scores is not None and not self.resume:
                self.writer.write_saliency(self.mask.scores, self.method.mask_scores_attrs(self.cfg))
            if not self.resume:
                # Round 0: the state before any training. From here on a stop or a kill always
                # leaves a file that --resume accepts, however early it comes.
                vector, kept = self._state()
                self.writer.write_checkpoint({"round": 0}, vector=vector, kept=kept, clients=self._client_arrays())
            elif 0 < self.resume.round and self.writer.n_rounds < self.resume.round:
                self._finish(dict(self.resume.row))  # the checkpointed round's row, cut off by a kill
            self._loop()
            self._write_mask()  # the final mask, for methods whose mask changes
            self.writer.write_model(self.s.flat.state())
            status = "complete"
        except (KeyboardInterrupt, Interrupted):
            status = "interrupted"
            raise
        finally:
            self.writer.close(status)
        return self.writer.path

    def _loop(self) -> None:
        """Round r: the subclass's `_round` sends the global model down, then finishes round r-1
        while the workers train (evaluates it and commits its row with the state after it, in
        one write, off the critical path), then gathers and aggregates round r. A kill loses at
        most the rounds not yet committed; the file always holds a checkpoint to resume from."""
        self.pending = None
        for r in range(self.start, self.cfg.rounds + 1):
            inject_fault(self.s.comm.rank, r)
            if self._stopping():
                raise Interrupted
            if r == self.start:
                self._timing_attrs()
            t0 = time.perf_counter()
            self.commit_s = 0.0
            row = self._round(r)
            row["time_round"] = time.perf_counter() - t0
            row["time_commit"] = self.commit_s  # the previous round's commit, made during this one
            self.pending = row
        self._finish_previous()
        inject_fault(self.s.comm.rank, self.cfg.rounds + 1)

    def _round(self, r: int) -> dict:
        raise NotImplementedError

    def _timing_attrs(self) -> None:
        """How long the launch took to reach its first round (process start to here, on rank 0;
        imports, data, partition, model, mask), and the setup part of it."""
        self.writer.set_attrs(startup_s=lifecycle.seconds_since_start(),
                              setup_s=time.perf_counter() - self.s.t_setup)

    def _finish_previous(self, *, force_checkpoint: bool = False) -> None:
        """Finish the last aggregated round while its state is still the current one."""
        if self.pending is not None:
            row, self.pending = self.pending, None
            r = row["round"]
            due = force_checkpoint or r % self.cfg.checkpoint_every == 0 or r == self.cfg.rounds
            self._finish(row, checkpoint=due)

    def _stopping(self) -> bool:
        """Every rank agrees at each round boundary; on a stop the last round is finished and
        checkpointed first."""
        if not self.s.comm.any_(self.s.stop.set):
            return False
        self._finish_previous(force_checkpoint=True)
        return True

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        """(vector, kept) that resume from the round being finished."""
        raise NotImplementedError

    def _client_arrays(self) -> dict[str, np.ndarray]:
        """Per-client state to checkpoint with it ([K, n] arrays by name)."""
        return {}

    def _write_mask(self) -> None:
        if self.method.sparse:
            self.writer.write_mask(self.mask.kept.cpu().numpy(), self.mask.layer_density(self.s.flat))
            self.writer.set_attrs(density=self.mask.density, n_kept=self.mask.n_kept,
                                  mask_digest=self.mask.digest())

    def _load_global(self) -> None:
        """Put the global model of the round being finished into s.flat."""
        raise NotImplementedError

    def _load_personal(self, cid: int) -> bool:
        """Put client cid's own model into s.flat (over the global one loaded before); False when it
        has none of its own."""
        return False

    def _evaluate(self) -> dict:
        """The global model on the whole test set, and on each client's own split (unweighted
        mean over clients); the first is the paper's accuracy (the SSFL code pools all clients' test
        splits, the whole test set once). The personal accuracy is the second number unless
        clients train in masks of their own."""
        s = self.s
        x, y = s.test
        correct, loss = predict(s.flat, x, y)
        clients = split_accuracy(correct, s.test_owner, self.cfg.clients)
        own = self.method.personalized or not self.method.shared_mask
        personal = self._personal() if own else clients
        return {"test_accuracy": float(correct.double().mean()), "test_loss": loss / len(y),
                "client_accuracy": clients, "personal_accuracy": personal}

    def _score_local_models(self, r: int) -> None:
        """Evaluate round r's clients' local models on their own test splits (protocols that keep them)."""

    def _local_accuracy(self) -> float:
        """Unweighted mean over clients of their last local model's accuracy; NaN where not kept."""
        return float("nan")

    def _personal(self) -> float:
        """Each client's own model on its own split, unweighted mean over clients."""
        s = self.s
        x, y = s.test
        saved = s.flat.flat.detach().clone()
        accs = []
        for cid in range(self.cfg.clients):
            idx = np.flatnonzero(s.test_owner == cid)
            if not len(idx):
                continue
            if not self._load_personal(cid):
                raise RuntimeError(f"{self.cfg.method}: client {cid} has no model of its own")
            correct, _ = predict(s.flat, x[idx], y[idx])
            accs.append(float(correct.double().mean()))
            s.flat.flat.detach().copy_(saved)
        return float(np.mean(accs))

    def _finish(self, row: dict, *, checkpoint: bool = False) -> None:
        """Evaluate the round's model (if due), write its row and, if asked, the state after it
        (with the row as known before evaluation, which a resumed run evaluates again), commit
        both at once, print its line."""
        cfg = self.cfg
        r = row["round"]
        t0 = time.perf_counter()
        self._score_local_models(r)  # part of the state after round r: before its checkpoint
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if checkpoint:
            vector, kept = self._state()
            self.writer.write_checkpoint(dict(row), vector=vector, kept=kept, clients=self._client_arrays(),
                                         commit=False)
        checkpoint_s = time.perf_counter() - t0
        self._load_global()
        nan = float("nan")
        metrics = {"test_accuracy": nan, "test_loss": nan, "client_accuracy": nan, "personal_accuracy": nan,
                   "local_accuracy": nan}
        if r % cfg.eval_every == 0 or r == cfg.rounds:
            t0 = time.perf_counter()
            metrics = {**self._evaluate(), "local_accuracy": self._local_accuracy()}
            metrics["time_eval"] = time.perf_counter() - t0 + local_s
        row.update({"time_eval": 0.0, **metrics})
        t0 = time.perf_counter()
        self.writer.append_round(row)
        self.commit_s = time.perf_counter() - t0 + checkpoint_s
        log.info("round %4d/%d  acc %s  personal %s  train %.4f  up %.3f MB  down %.3f MB  "
                 "comm %.3f s  round %.3f s", r, cfg.rounds, _fmt(metrics["test_accuracy"]),
                 _fmt(metrics["personal_accuracy"]),
                 row["train_loss"], row["bytes_up"] / 1e6, row["bytes_down"] / 1e6,
                 row["time_comm"], row["time_round"])

    def _round_row(self, r: int, plan: RoundPlan, meta: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
        """Check the received client set; the row's common fields, the client-id order, sizes."""
        rss = self.s.comm.gatherv(np.array([peak_rss_mb()]), np.ones(self.s.comm.size, dtype=np.int64))
        cids = meta["client"].astype(np.int64)
        if not np.array_equal(np.sort(cids), plan.clients):
            raise RuntimeError(f"round {r}: received updates of clients {sorted(cids)}, "
                               f"expected {plan.clients.tolist()}")
        order = np.argsort(cids, kind="stable")
        sizes = meta["n_samples"][order]
        ranks = np.array([plan.rank_of[int(c)] for c in cids])
        busy = np.unique(ranks)
        compute = np.array([meta["compute_s"][ranks == q].sum() for q in busy])
        pack = np.array([meta["pack_s"][ranks == q].sum() for q in busy])
        # A worker's time in the round's MPI calls (the same on each of its records); the server's
        # own clients (--server-trains) have none.
        waits = [meta["comm_s"][ranks == q][0] for q in busy if q != 0]
        row = {"round": r, "train_loss": float(np.dot(sizes, meta["loss"][order]) / sizes.sum()),
               "time_compute": float(compute.max()), "time_compute_mean": float(compute.mean()),
               "time_pack": float(pack.max()), "time_wait": float(np.mean(waits)) if waits else 0.0,
               "time_comm": float(meta["comm_s"].max()),
               "peak_rss_server_mb": float(rss[0]), "peak_rss_workers_mb": float(rss[1:].max()),
               "clients_skipped": 0}
        return row, order, sizes

    def _finite_or_skip(self, r: int, cid: int, *arrays, rank: int) -> bool:
        """False if the client's update must be left out; stops the run unless told to skip."""
        if all(a is None or bool(np.isfinite(np.asarray(a)).all()) for a in arrays):
            return True
        message = (f"round {r}: client {cid} (rank {rank}) sent a non-finite update (NaN or "
                   f"Inf); nothing of it reached the global model. Lower --lr or --grad-clip, or pass "
                   f"--on-nonfinite skip to leave such updates out")
        if self.cfg.on_nonfinite == "stop":
            raise RunError(message)
        log.warning("%s: skipped", message.split(";")[0])
        return False


def worker_rounds(s: Setup, start: int, round_) -> None:
    """A worker's loop over rounds start..R: `round_(r)` each, after the round-boundary stop
    agreement. The round's MPI time starts before that agreement: a worker that finished early
    waits in it for the slowest one (the Gatherv before it returns at once)."""
    for r in range(start, s.cfg.rounds + 1):
        inject_fault(s.comm.rank, r)
        s.comm.reset_timer()
        if s.comm.any_(s.stop.set):
            raise Interrupted
        round_(r)
    inject_fault(s.comm.rank, s.cfg.rounds + 1)


def report_rss(comm: mpi.Comm) -> None:
    """A worker's half of the per-round memory gather in `ServerBase._round_row`."""
    comm.gatherv(np.array([peak_rss_mb()]), np.ones(comm.size, dtype=np.int64))


def _fmt(value: float) -> str:
    return "   -  " if np.isnan(value) else f"{value:.4f}"
