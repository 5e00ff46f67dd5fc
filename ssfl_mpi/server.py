"""Rank 0's side of a run that both round protocols share: the result file, evaluation, progress lines."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import comm as mpi
from . import lifecycle
from .errors import Interrupted, RunError
from .lifecycle import peak_rss_mb
from .results import ResultWriter
from . import round_plan
from .round_plan import RoundPlan
from .run_setup import ResumePoint, Setup
from .sparse import Mask
from .training import predict, split_accuracy

log = logging.getLogger("ssfl_mpi")


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
            if self._stopping(r):
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

    def _stopping(self, r: int) -> bool:
        """Every rank agrees at each round boundary; on a stop the last round is finished and
        checkpointed first."""
        if not round_plan.stop_agreed(self.s, r):
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


def _fmt(value: float) -> str:
    return "   -  " if np.isnan(value) else f"{value:.4f}"
