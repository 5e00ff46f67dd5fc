"""Rounds of methods that send named-field messages (every method without one fixed shared mask:
client-wise masks, FedDST, PruneFL, DisPFL, LotteryFL, SparsyFed, Top-K): the method decides what
travels, this module moves it and counts it.

Per round: Bcast of the downlink lengths, then Bcast of the one shared message or Scatterv of the
per-client ones; Gatherv of uplink lengths, Gatherv of the uplink bytes, Gatherv of metadata.
bytes_up/bytes_down are the sizes of those buffers without the client-state fields (see `fields`).
The server keeps every client's state (`ClientStore`), which checkpoints and resumes with the run.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import fields
from .clientstate import ClientStore
from .round_plan import RoundPlan, gather_meta, new_meta, report_rss, send_meta, worker_rounds
from .run_setup import ResumePoint, Setup, local_spec
from .server import ServerBase
from .sparse import Mask, make_mask


def _rank_sums(lengths: np.ndarray, per_rank: np.ndarray) -> np.ndarray:
    """Per-rank byte counts from per-client lengths listed in rank order (client-id order within)."""
    ends = np.cumsum(np.concatenate([[0], lengths]))
    bounds = np.cumsum(np.concatenate([[0], per_rank]))
    return (ends[bounds[1:]] - ends[bounds[:-1]]).astype(np.int64)


def _split(buf: np.ndarray, clients: np.ndarray, lengths: np.ndarray) -> dict[int, np.ndarray]:
    """One rank's part of a Scatterv: its clients' messages, one after another."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return {int(cid): buf[offsets[i]: offsets[i + 1]] for i, cid in enumerate(clients)}


class MessageServer(ServerBase):
    def __init__(self, s: Setup, mask: Mask, resume: ResumePoint | None = None):
        super().__init__(s, mask, resume)
        self.flat = s.flat
        self.store = ClientStore(self.method.client_state(s.cfg, s.flat), s.cfg.clients)
        if resume:
            self.global_flat = torch.from_numpy(resume.vector.astype(np.float32).copy())
            self.store.load(resume.clients or {})
        else:
            self.global_flat = s.flat.flat.detach().cpu().clone()
            self.method.init_clients(self)
        self.local = MessageWorker(s, mask, resume) if s.cfg.server_trains else None

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.global_flat.numpy().copy(), self.mask.kept.cpu().numpy()

    def _client_arrays(self) -> dict[str, np.ndarray]:
        return self.store.arrays

    def _round(self, r: int) -> dict:
        """Down, finish the previous round while the workers train, up, aggregate."""
        plan = RoundPlan(self.s, r)
        own, traffic_down = self._send_down(plan)
        self._finish_previous()
        own_reply = (self.local.train(plan, own) if self.local else
                     (np.empty(0, np.int64), np.empty(0, np.uint8), None))
        received, meta = self._gather_up(plan, *own_reply)
        return self._aggregate(plan, received, meta, traffic_down)

    def _send_down(self, plan: RoundPlan) -> tuple[dict[int, np.ndarray], fields.Traffic]:
        """The method's downlink to the round's clients; the workers' side is `MessageWorker._receive`.
        Returns the messages of the server's own clients and the downlink's traffic."""
        comm, r = self.s.comm, plan.r
        down = self.method.downlink(self, r, plan.clients)
        shared = isinstance(down, dict)
        msgs = [fields.encode(down)] if shared else [fields.encode(m) for m in down]
        lengths = np.array([msgs[0].size] * len(plan.clients) if shared else [m.size for m in msgs], dtype=np.int64)
        comm.bcast_(np.append(lengths, int(shared)))  # the last entry says: one broadcast message
        mine = plan.ranks == comm.rank  # the server's own clients, when it trains some
        if shared:
            comm.bcast_(msgs[0])
            own = {int(cid): msgs[0] for cid in plan.clients[mine]}
        else:
            by_rank = plan.scatter_order()
            part = comm.scatterv(np.concatenate([msgs[i] for i in by_rank]),
                                 _rank_sums(lengths[by_rank], plan.per_rank))
            own = _split(part, plan.clients[mine], lengths[mine])
        traffic_down = fields.Traffic()
        for m in msgs:
            traffic_down.add(m, times=len(plan.clients) if shared else 1)
        return own, traffic_down

    def _gather_up(self, plan: RoundPlan, own_len: np.ndarray, own_buf: np.ndarray,
                   own_meta: np.ndarray | None) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """Every sampled client's reply and metadata; the workers' side is `MessageWorker._send_up`."""
        comm = self.s.comm
        up_len = comm.gatherv(own_len, plan.per_rank)
        up = comm.gatherv(own_buf, _rank_sums(up_len, plan.per_rank))
        meta = gather_meta(comm, plan, own_meta)
        offsets = np.concatenate([[0], np.cumsum(up_len)])
        received = {int(meta["client"][i]): up[offsets[i]: offsets[i + 1]] for i in range(len(up_len))}
        return received, meta

    def _aggregate(self, plan: RoundPlan, received: dict[int, np.ndarray], meta: np.ndarray,
                   traffic_down: fields.Traffic) -> dict:
        """The finite replies folded in by the method; the round's row with its traffic."""
        r = plan.r
        t0 = time.perf_counter()
        row, order, sizes = self._round_row(r, plan, meta)
        traffic_up = fields.Traffic()
        updates, weights = {}, {}
        for j, i in enumerate(order):
            cid = int(meta["client"][i])
            buf = received[cid]
            traffic_up.add(buf)
            msg = fields.decode(buf)
            if self._finite_or_skip(r, cid, *[t for t in msg.values() if t.dtype == torch.float32],
                                    rank=plan.rank_of[cid]):
                updates[cid], weights[cid] = msg, float(sizes[j])
        extra = self.method.aggregate(self, r, updates, weights) if updates else {}
        kept = self.method.global_kept(self)
        if kept is not None:
            self.mask = make_mask(self.flat, kept)
        row.update(bytes_up=traffic_up.total, bytes_down=traffic_down.total, meta_bytes_up=traffic_up.meta,
                   meta_bytes_down=traffic_down.meta, masks_bitmap=traffic_up.bitmap + traffic_down.bitmap,
                   masks_indices=traffic_up.positions + traffic_down.positions,
                   mask_changes=int(extra.get("mask_changes", 0)), clients_skipped=len(order) - len(updates),
                   density_up=float(extra.get("density_up", np.nan)),
                   density_down=float(extra.get("density_down", np.nan)), time_aggregate=time.perf_counter() - t0)
        return row

    def _load_global(self) -> None:
        self.s.flat.flat.detach().copy_(self.global_flat)

    def _load_personal(self, cid: int) -> bool:
        vector = self.method.personal_vector(self, cid)
        if vector is None:
            return False
        self.s.flat.flat.detach().copy_(vector)
        return True


class MessageWorker:
    def __init__(self, s: Setup, mask: Mask, resume: ResumePoint | None = None):
        self.s, self.cfg, self.flat, self.device = s, s.cfg, s.flat, s.device
        self.start = resume.round + 1 if resume else 1
        self.method = s.method
        self.spec = local_spec(s.cfg, s.dataset)

    def run(self) -> None:
        worker_rounds(self.s, self.start, lambda r: self._round(RoundPlan(self.s, r)))

    def _receive(self, plan: RoundPlan) -> dict[int, np.ndarray]:
        """The workers' side of `MessageServer._send_down`: this rank's clients' messages."""
        comm = self.s.comm
        lengths = np.empty(len(plan.clients) + 1, dtype=np.int64)
        comm.bcast_(lengths)
        shared, lengths = bool(lengths[-1]), lengths[:-1]
        mine = plan.ranks == comm.rank
        if shared:
            buf = np.empty(int(lengths[0]), dtype=np.uint8)
            comm.bcast_(buf)
            return {int(cid): buf for cid in plan.clients[mine]}
        by_rank = plan.scatter_order()
        buf = comm.scatterv(None, _rank_sums(lengths[by_rank], plan.per_rank), dtype=np.uint8)
        return _split(buf, plan.clients[mine], lengths[mine])

    def _round(self, plan: RoundPlan) -> None:
        self._send_up(plan, *self.train(plan, self._receive(plan)))

    def _send_up(self, plan: RoundPlan, lengths: np.ndarray, buf: np.ndarray, meta: np.ndarray) -> None:
        """The workers' side of `MessageServer._gather_up` (and of the server's memory gather)."""
        comm = self.s.comm
        comm.gatherv(lengths, plan.per_rank)
        counts = np.zeros(comm.size, dtype=np.int64)
        counts[comm.rank] = lengths.sum()  # only the root's counts matter to Gatherv
        comm.gatherv(buf, counts)
        meta["comm_s"] = comm.reset_timer()
        send_meta(comm, meta, plan)
        report_rss(comm)

    def train(self, plan: RoundPlan, received: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This rank's clients of the round: (reply lengths, replies, metadata), in client-id order."""
        s, r = self.s, plan.r
        s.forget_visitors(received)
        out, meta = [], new_meta(len(received))
        for i, cid in enumerate(sorted(received)):
            t0 = time.perf_counter()
            x, y = s.data_of(cid)
            msg = fields.decode(received[cid])
            packing = time.perf_counter() - t0
            reply, loss = self.method.client_update(self, cid, msg, x, y, r)
            t1 = time.perf_counter()
            out.append(fields.encode(reply))
            packing += time.perf_counter() - t1
            meta[i] = cid, len(y), loss, time.perf_counter() - t0, 0.0, packing
        lengths = np.array([m.size for m in out], dtype=np.int64)
        buf = np.concatenate(out) if out else np.empty(0, np.uint8)
        return lengths, buf, meta
