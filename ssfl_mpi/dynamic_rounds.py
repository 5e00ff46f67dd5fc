"""Rounds of per-client or changing masks (random-clientwise, feddst, prunefl): messages with metadata.

Clients are stateless, as in cross-device FL: a sampled client may never have seen the current
mask, so every downlink message carries the mask it is to train in (bitmap or int32 indices,
whichever is smaller; see `codec`). An uplink message carries a mask only when the client changed
it (FedDST's readjustment rounds), and PruneFL's importance scores on its reconfiguration rounds.

Per round: Bcast of the downlink lengths, then Bcast of the one shared message or Scatterv of
the per-client ones; Gatherv of uplink lengths, Gatherv of the uplink bytes, Gatherv of metadata.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import codec
from . import methods
from .errors import Interrupted
from .lifecycle import inject_fault, poisoned
from .protocol import (ResumePoint, RoundPlan, ServerBase, Setup, gather_meta, local_spec, new_meta,
                       report_rss, send_meta)
from .seeding import torch_gen
from .sparse import Mask, make_mask, n_keep, pack
from .training import local_train


def _rank_sums(lengths: np.ndarray, per_rank: np.ndarray) -> np.ndarray:
    """Per-rank byte counts from per-client lengths listed in rank order (client-id order within)."""
    ends = np.cumsum(np.concatenate([[0], lengths]))
    bounds = np.cumsum(np.concatenate([[0], per_rank]))
    return (ends[bounds[1:]] - ends[bounds[:-1]]).astype(np.int64)


class _Traffic:
    """Byte and encoding counts of one direction of one round, from the buffers really sent."""

    def __init__(self):
        self.total = self.meta = self.bitmap = self.indices = 0

    def add(self, buf: np.ndarray) -> None:
        kind, n_values, _, _ = codec.header(buf)
        self.total += buf.size
        self.meta += buf.size - 4 * n_values
        self.bitmap += kind == codec.BITMAP
        self.indices += kind == codec.INDICES


class DynamicServer(ServerBase):
    def __init__(self, s: Setup, mask: Mask, resume: ResumePoint | None = None):
        super().__init__(s, mask, resume)
        if resume:
            if resume.vector.size != s.flat.numel:
                raise RuntimeError(f"checkpoint vector of {resume.vector.size} values for a model of "
                                   f"{s.flat.numel}")
            self.global_flat = torch.from_numpy(resume.vector.astype(np.float32).copy())
        else:
            self.global_flat = s.flat.flat.detach().cpu().clone()
        self.k = n_keep(s.cfg.density, s.flat.n_prunable)

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.global_flat.numpy().copy(), self.mask.kept.cpu().numpy()

    def client_kept(self, cid: int) -> torch.Tensor:
        if self.method.shared_mask:
            return self.mask.kept
        cfg = self.cfg
        return self.method.client_mask(self.s.flat, cid, seed=cfg.seed, density=cfg.density,
                                       distribution=cfg.mask_distribution)

    def _load_personal(self, cid: int) -> bool:
        """A client's own model is the global one inside its own mask."""
        self.s.flat.flat.detach().mul_(make_mask(self.s.flat, self.client_kept(cid)).multiplier)
        return True

    def _downlink(self, plan: RoundPlan) -> tuple[list[np.ndarray], list[Mask]]:
        """One message per sampled client in client-id order (one object shared when masks are)."""
        flat = self.s.flat
        if self.method.shared_mask:
            msg = codec.encode(pack(self.global_flat, self.mask.send_idx.cpu()), self.mask.kept)
            return [msg] * len(plan.clients), [self.mask] * len(plan.clients)
        msgs, masks = [], []
        for cid in plan.clients:
            m = make_mask(flat, self.client_kept(int(cid)))
            masks.append(m)
            msgs.append(codec.encode(pack(self.global_flat, m.send_idx.cpu()), m.kept))
        return msgs, masks

    def _round(self, r: int) -> dict:
        comm = self.s.comm
        plan = RoundPlan(self.s, r)
        msgs, masks = self._downlink(plan)
        lengths = np.array([m.size for m in msgs], dtype=np.int64)
        comm.bcast_(lengths)
        if self.method.shared_mask:
            comm.bcast_(msgs[0])
        else:
            by_rank = np.argsort(self.s.home[plan.clients], kind="stable")  # Scatterv order
            comm.scatterv(np.concatenate([msgs[i] for i in by_rank]), _rank_sums(lengths[by_rank], plan.per_rank))
        down = _Traffic()
        for m in msgs:
            down.add(m)
        self._finish_previous()
        up_len = comm.gatherv(np.empty(0, np.int64), plan.per_rank)
        up = comm.gatherv(np.empty(0, np.uint8), _rank_sums(up_len, plan.per_rank))
        meta = gather_meta(comm, plan)
        row = self._aggregate(r, plan, masks, up, up_len, meta)
        row.update(bytes_down=down.total, meta_bytes_down=down.meta, masks_bitmap=row["masks_bitmap"] + down.bitmap,
                   masks_indices=row["masks_indices"] + down.indices,
                   density_down=float(np.mean([m.density for m in masks])))
        return row

    def _aggregate(self, r: int, plan: RoundPlan, masks: list[Mask], up: np.ndarray,
                   up_len: np.ndarray, meta: np.ndarray) -> dict:
        """Average every coordinate over the clients that kept it, weighted by n_k, in client-id order."""
        row, order, sizes = self._round_row(r, plan, meta)
        flat, n_prunable = self.s.flat, self.s.flat.n_prunable
        offsets = np.concatenate([[0], np.cumsum(up_len)])
        received = {int(meta["client"][i]): up[offsets[i]: offsets[i + 1]] for i in range(len(up_len))}
        cids = np.sort(meta["client"].astype(np.int64))
        weighted = torch.zeros(flat.numel, dtype=torch.float64)
        weight = torch.zeros(flat.numel, dtype=torch.float64)
        votes = np.zeros(n_prunable, dtype=np.int64)
        densities = []
        importance = np.zeros(n_prunable, dtype=np.float64)
        traffic = _Traffic()
        skipped = 0
        for j, cid in enumerate(cids):
            msg = codec.decode(received[int(cid)], n_prunable=n_prunable)
            traffic.add(received[int(cid)])
            if not self._finite_or_skip(r, int(cid), msg.values, msg.extra):
                skipped += 1
                continue
            m = masks[j] if msg.kept is None else make_mask(flat, msg.kept)
            idx = m.send_idx.cpu()
            if msg.values.numel() != idx.numel():
                raise RuntimeError(f"round {r}: client {cid} sent {msg.values.numel()} values for a mask "
                                   f"of {idx.numel()}")
            n_k = float(sizes[j])
            weighted.index_add_(0, idx, msg.values.double(), alpha=n_k)
            weight.index_add_(0, idx, torch.full((idx.numel(),), n_k, dtype=torch.float64))
            votes += m.kept.cpu().numpy()
            densities.append(m.density)
            if msg.extra is not None:
                importance += n_k * msg.extra.double().numpy()
        changes = 0
        has = weight > 0
        self.global_flat[has] = (weighted[has] / weight[has]).float()
        if self.method.readjusts(r, every=self.cfg.readjust_every) and self.method.shared_mask:
            kept = self.method.server_mask(votes=votes, weights=self.global_flat[flat.prunable_idx.cpu()].numpy(),
                                           importance=importance / max(sizes.sum(), 1), k=self.k)
            changes = int((torch.from_numpy(kept) != self.mask.kept.cpu()).sum())
            self.mask = make_mask(flat, torch.from_numpy(kept))
            self.global_flat.mul_(self.mask.multiplier.cpu())
        row.update(bytes_up=traffic.total, meta_bytes_up=traffic.meta, masks_bitmap=traffic.bitmap,
                   masks_indices=traffic.indices, mask_changes=changes, clients_skipped=skipped,
                   density_up=float(np.mean(densities)) if densities else float("nan"))
        return row

    def _load_global(self) -> None:
        self.s.flat.flat.detach().copy_(self.global_flat)


class DynamicWorker:
    def __init__(self, s: Setup, mask: Mask, resume: ResumePoint | None = None):
        self.s, self.cfg = s, s.cfg
        self.start = resume.round + 1 if resume else 1
        self.method = methods.get(s.cfg.method)
        self.spec = local_spec(s.cfg, s.dataset)

    def run(self) -> None:
        for r in range(self.start, self.cfg.rounds + 1):
            inject_fault(self.s.comm.rank, r)
            if self.s.comm.any_(self.s.stop.set):
                raise Interrupted
            self._round(RoundPlan(self.s, r))
        inject_fault(self.s.comm.rank, self.cfg.rounds + 1)

    def _receive(self, plan: RoundPlan) -> dict[int, codec.Message]:
        s, comm = self.s, self.s.comm
        lengths = np.empty(len(plan.clients), dtype=np.int64)
        comm.bcast_(lengths)
        if self.method.shared_mask:
            buf = np.empty(int(lengths[0]), dtype=np.uint8)
            comm.bcast_(buf)
            msg = codec.decode(buf, n_prunable=s.flat.n_prunable)
            return {cid: msg for cid in plan.mine(s)}
        mine = s.home[plan.clients] == comm.rank
        by_rank = np.argsort(s.home[plan.clients], kind="stable")
        buf = comm.scatterv(None, _rank_sums(lengths[by_rank], plan.per_rank), dtype=np.uint8)
        offsets = np.concatenate([[0], np.cumsum(lengths[mine])])
        return {int(cid): codec.decode(buf[offsets[i]: offsets[i + 1]], n_prunable=s.flat.n_prunable)
                for i, cid in enumerate(plan.clients[mine])}

    def _round(self, plan: RoundPlan) -> None:
        s, comm, cfg, r = self.s, self.s.comm, self.cfg, plan.r
        comm.reset_timer()
        received = self._receive(plan)
        readjust = self.method.readjusts(r, every=cfg.readjust_every)
        out, meta = [], new_meta(len(received))
        for i, cid in enumerate(sorted(received)):
            t0 = time.perf_counter()
            msg = received[cid]
            mask = make_mask(s.flat, msg.kept)
            s.flat.flat.detach().zero_().index_copy_(0, mask.send_idx, msg.values.to(s.device))
            x, y = s.clients[cid]
            grad_sq = (torch.zeros_like(s.flat.flat) if readjust and self.method.collects_importance else None)
            loss = local_train(s.flat, x, y, spec=self.spec, multiplier=mask.multiplier,
                               gen=torch_gen(cfg.seed, "shuffle", cid, r), round_=r, grad_sq=grad_sq)
            new_kept = None
            if readjust and self.method.client_regrows:
                fraction = self.method.prune_fraction(r, rounds=cfg.rounds, ratio=cfg.readjust_ratio)
                new_kept = self.method.readjust(s.flat, mask.kept, x, y, fraction=fraction,
                                                batch_size=cfg.batch_size, gen=torch_gen(cfg.seed, "regrow", cid, r))
                mask = make_mask(s.flat, new_kept)
            extra = grad_sq[s.flat.prunable_idx] if grad_sq is not None else None
            values = pack(s.flat.flat, mask.send_idx)
            if poisoned("nan", cid, r):
                values[0] = float("nan")
            out.append(codec.encode(values, new_kept, extra))
            meta[i] = cid, len(y), loss, time.perf_counter() - t0, 0.0
        lengths = np.array([m.size for m in out], dtype=np.int64)
        comm.gatherv(lengths, plan.per_rank)
        counts = np.zeros(comm.size, dtype=np.int64)
        counts[comm.rank] = lengths.sum()  # only the root's counts matter to Gatherv
        buf = np.concatenate(out) if out else np.empty(0, np.uint8)
        if poisoned("count", comm.rank, r):
            buf = buf[:-1]
        comm.gatherv(buf, counts)
        meta["comm_s"] = comm.reset_timer()
        send_meta(comm, meta, plan)
        report_rss(comm)
