"""Rounds of a fixed shared mask (FedAvg, SSFL, random, magnitude, snip-single): values only on the wire.

Per round: Bcast of the packed global vector, one Gatherv of every sampled client's packed update
(counts known to all from the shared client sample), one Gatherv of per-client metadata.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .aggregation import weighted_average
from .round_plan import RoundPlan, gather_meta, new_meta, report_rss, send_meta, worker_rounds
from .run_setup import ResumePoint, Setup, local_spec
from .server import ServerBase
from .seeding import torch_gen
from .sparse import Mask, pack, unpack
from .training import local_train, local_train_batched, predict


# The per-client state the server keeps (checkpointed with the run): each client's last local
# model's accuracy on its own test split, -1 until the client has trained.
CLIENT_STATE = {"local_accuracy": (np.float64, 1)}
NOT_TRAINED = -1.0


class StaticServer(ServerBase):
    def __init__(self, s: Setup, mask: Mask, resume: ResumePoint | None = None):
        super().__init__(s, mask, resume)
        if resume:
            if resume.vector.size != mask.payload:
                raise RuntimeError(f"checkpoint vector of {resume.vector.size} values for a mask payload "
                                   f"of {mask.payload}")
            self.global_np = resume.vector.astype(np.float32).copy()
        else:
            self.global_np = pack(s.flat.flat, mask.send_idx).cpu().numpy()
        self.recv = np.empty(s.cfg.clients_per_round * mask.payload, dtype=np.float32)
        self.local = StaticWorker(s, mask, resume) if s.cfg.server_trains else None
        # The SSFL code's "personal" accuracy, per client (CLIENT_STATE).
        kept = (resume.clients or {}).get("local_accuracy") if resume else None
        self.local_acc = kept[:, 0].copy() if kept is not None else np.full(s.cfg.clients, NOT_TRAINED)
        self._trained: tuple | None = None  # (round, [(client, row)]) of the last aggregate's updates

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.global_np.copy(), self.mask.kept.cpu().numpy()

    def _client_arrays(self) -> dict[str, np.ndarray]:
        return {"local_accuracy": self.local_acc[:, None].copy()}

    def _score_local_models(self, r: int) -> None:
        """The updates of round r are still in the receive buffer (the next gather comes after)."""
        if self._trained is None or self._trained[0] != r:
            return  # a resumed run's checkpointed round: its scores are in the checkpoint
        s = self.s
        x, y = s.test
        for cid, update in self._trained[1]:
            idx = np.flatnonzero(s.test_owner == cid)
            if len(idx):
                unpack(update.to(s.device), self.mask.send_idx, s.flat.flat)
                correct, _ = predict(s.flat, x[idx], y[idx])
                self.local_acc[cid] = float(correct.double().mean())
        self._trained = None

    def _local_accuracy(self) -> float:
        scored = self.local_acc[self.local_acc != NOT_TRAINED]
        return float(scored.mean()) if len(scored) else float("nan")

    def _round(self, r: int) -> dict:
        """Down (one Bcast of the packed values), finish the previous round while the workers train,
        up (one Gatherv of packed updates, then their metadata), aggregate. The workers' side of each
        collective is in `StaticWorker._round`, in the same order."""
        comm = self.s.comm
        plan = RoundPlan(self.s, r, self.mask.payload)
        comm.bcast_(self.global_np)
        self._finish_previous()
        own, own_meta = self.local.train(plan, self.global_np) if self.local else (np.empty(0, np.float32), None)
        updates = comm.gatherv(own, plan.model_counts, self.recv)
        meta = gather_meta(comm, plan, own_meta)
        return self._aggregate(r, plan, updates, meta)

    def _aggregate(self, r: int, plan: RoundPlan, updates: np.ndarray, meta: np.ndarray) -> dict:
        t0 = time.perf_counter()
        row, order, _ = self._round_row(r, plan, meta)
        rows = torch.from_numpy(updates).view(len(order), self.mask.payload)
        cids = meta["client"].astype(np.int64)
        good = [i for i in order if self._finite_or_skip(r, int(cids[i]), rows[i], rank=plan.rank_of[int(cids[i])])]
        if good:  # with every update skipped, the global model stays as it was
            weighted_average([rows[i] for i in good], meta["n_samples"][good], out=torch.from_numpy(self.global_np))
        self._trained = (r, [(int(cids[i]), rows[i]) for i in good])
        payload_bytes = self.mask.payload * self.global_np.itemsize * len(order)
        row.update(bytes_up=int(updates.nbytes), bytes_down=payload_bytes, meta_bytes_up=0,
                   meta_bytes_down=0, masks_bitmap=0, masks_indices=0, mask_changes=0,
                   clients_skipped=len(order) - len(good), density_up=self.mask.density,
                   density_down=self.mask.density, time_aggregate=time.perf_counter() - t0)
        return row

    def _load_global(self) -> None:
        unpack(torch.from_numpy(self.global_np).to(self.s.device), self.mask.send_idx, self.s.flat.flat)


def batches(mine: list[int], sizes: np.ndarray, n: int) -> list[list[int]]:
    """A rank's clients in the groups trained together: one each (n = 1), or up to n of equal
    sample count (--batch-clients), each group in client-id order."""
    if n == 1:
        return [[cid] for cid in mine]
    by_size: dict[int, list[int]] = {}
    for cid in mine:
        by_size.setdefault(int(sizes[cid]), []).append(cid)
    return [same[i: i + n] for same in by_size.values() for i in range(0, len(same), n)]


class StaticWorker:
    def __init__(self, s: Setup, mask: Mask, resume: ResumePoint | None = None):
        self.s, self.mask, self.cfg = s, mask, s.cfg
        self.start = resume.round + 1 if resume else 1
        self.global_np = np.empty(mask.payload, dtype=np.float32)
        # Reused every round: at most min(M, own clients) updates go up from this rank.
        self.send = np.empty(0, dtype=np.float32)  # grown to the most clients a round places here
        self.spec = local_spec(s.cfg, s.dataset)
        # A dense mask needs no multiply: nothing is pruned.
        self.multiplier = mask.multiplier if mask.n_kept < s.flat.n_prunable else None

    def run(self) -> None:
        worker_rounds(self.s, self.start, lambda r: self._round(RoundPlan(self.s, r, self.mask.payload)))

    def _round(self, plan: RoundPlan) -> None:
        comm = self.s.comm
        comm.bcast_(self.global_np)
        send, meta = self.train(plan, self.global_np)
        comm.gatherv(send, plan.model_counts)
        meta["comm_s"] = comm.reset_timer()
        send_meta(comm, meta, plan)
        report_rss(comm)

    def train(self, plan: RoundPlan, global_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This rank's clients of the round from the global vector: (packed updates, metadata)."""
        s, payload = self.s, self.mask.payload
        mine = plan.mine(s)
        global_t = torch.from_numpy(global_np).to(s.device)
        if self.send.size < len(mine) * payload:
            self.send = np.empty(len(mine) * payload, dtype=np.float32)
        send = self.send[: len(mine) * payload]
        send_t = torch.from_numpy(send)
        meta = new_meta(len(mine))
        slot = {cid: i for i, cid in enumerate(mine)}
        for group in batches(mine, self.s.sizes, self.cfg.batch_clients):
            t0 = time.perf_counter()
            unpack(global_t, self.mask.send_idx, s.flat.flat)
            packing = time.perf_counter() - t0
            data = [s.data_of(cid) for cid in group]
            gens = [torch_gen(self.cfg.seed, "shuffle", cid, plan.r) for cid in group]
            if len(group) == 1:
                losses = [local_train(s.flat, *data[0], spec=self.spec, multiplier=self.multiplier, gen=gens[0],
                                      round_=plan.r)]
                trained = [s.flat.flat]
            else:
                trained, losses = local_train_batched(s.flat, [x for x, _ in data], [y for _, y in data],
                                                      spec=self.spec, multiplier=self.multiplier, gens=gens,
                                                      round_=plan.r)
            seconds = (time.perf_counter() - t0 - packing) / len(group)  # a batch's training, shared out
            for j, cid in enumerate(group):
                t1 = time.perf_counter()
                i = slot[cid]
                out = send_t[i * payload: (i + 1) * payload]
                if s.device.type == "cpu":
                    pack(trained[j], self.mask.send_idx, out=out)
                else:
                    out.copy_(pack(trained[j], self.mask.send_idx))
                packed = time.perf_counter() - t1 + packing / len(group)
                meta[i] = cid, len(data[j][1]), losses[j], seconds + packed, 0.0, packed
        return send, meta
