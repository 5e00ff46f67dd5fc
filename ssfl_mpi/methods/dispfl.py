"""DisPFL (Dai et al., ICML 2022; rong-dai/DisPFL) on a star topology, as ALGORITHMS.md describes it.

Every client owns a personal mask (ERK layer densities, random per client) and personal weights;
the server keeps both for every client (checkpointed) and computes each sampled client's
neighbour average. The data flow is DisPFL's own (dispfl_api.py, `_aggregate_func`): a client's
shared model is the weights it trained, on the mask it trained them in (`shared`); the average
of the previous round's shared models of `--neighbours` random other clients and its own is
taken per coordinate over those whose shared mask holds it (uniform, not size-weighted; 0 where
none does), and only then cut to the client's current mask, the one its last prune-and-regrow
produced. A freshly regrown weight thus starts from its neighbours' trained values where they
hold it (0 where none does), never from a held zero. The client trains inside its mask, then per
tensor prunes the ceil(r_t * nnz) smallest |w| it holds, r_t = (a/2)(1 + cos(pi t / T)) with
a = --readjust-ratio (DisPFL: 0.5), and regrows as many of the then inactive weights by the
gradient magnitude of one dense minibatch (--regrow gradient) or at random (--regrow random; the
published script's --dis_gradient_check). Its trained weights are not cut to the new mask.

Traffic: down, the values on the client's current mask (a client holds its own mask, so the mask
travels as client state, not counted); up, the trained values on the mask it trained in and the
mask's changes (which the server needs to know its new mask).
Participation: --clients-per-round = --clients is the published setting (all clients every
round); fewer is the FedAvg-like sample. The global accuracy is that of the average of all
clients' models over their mask holders (DisPFL itself reports only the personalized one).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import fields
from ..masks import random_mask
from ..seeding import torch_gen
from ..sparse import FlatModel, make_mask, n_keep, take, topk_mask
from ..training import local_train
from .base import READJUST_RATIO, Option
from .messages import MessageMethod, apply_changes, load_masked


def holder_average(flat: FlatModel, weights: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Per coordinate, the mean over the models whose mask holds it (dense tensors: all); 0 where none."""
    total = torch.zeros(flat.numel, dtype=torch.float64)
    count = torch.zeros(flat.numel, dtype=torch.float64)
    idx = flat.prunable_idx.cpu()
    for w, m in zip(weights, masks):
        total += w.double()
        held = torch.ones(flat.numel, dtype=torch.float64)
        held[idx] = m.double()
        count += held
    return torch.where(count > 0, total / count.clamp(min=1), 0.0).float()


class DisPFL(MessageMethod):
    name = "dispfl"
    summary = "DisPFL: personal ERK masks, neighbour averaging, cosine prune-and-regrow (Dai et al. 2022)"
    shared_mask = False
    personalized = True
    options = {
        "neighbours": Option(10, "random other clients averaged with each sampled client", minimum=0),
        "regrow": Option("gradient", "regrow weights by dense-minibatch gradient magnitude, or at random",
                         choices=("gradient", "random")),
        "readjust_ratio": READJUST_RATIO,
    }

    def label(self, cfg: dict) -> str:
        part = "all clients" if cfg["clients_per_round"] == cfg["clients"] else "sampled"
        return f"dispfl ({cfg.get('regrow', 'gradient')} regrowth, {part})"

    def client_state(self, cfg, flat):
        """mask: the client's current mask; shared: the mask its weights were trained in."""
        return {"mask": (bool, flat.n_prunable), "shared": (bool, flat.n_prunable),
                "weights": (np.float32, flat.numel)}

    def _multiplier(self, flat: FlatModel, kept: torch.Tensor) -> torch.Tensor:
        return make_mask(flat, kept).multiplier.cpu()

    def init_clients(self, srv) -> None:
        flat, cfg = srv.flat, srv.cfg
        k = n_keep(cfg.density, flat.n_prunable)
        for cid in range(cfg.clients):
            kept = random_mask(flat.prunable_shapes(), k, "erk", torch_gen(cfg.seed, "client-mask", cid))
            srv.store.put("mask", cid, kept)
            srv.store.put("shared", cid, kept)
            srv.store.put("weights", cid, srv.global_flat * self._multiplier(flat, kept))

    def neighbours(self, cfg, cid: int, r: int) -> list[int]:
        """--neighbours random other clients of client cid in round r, and cid itself, sorted."""
        others = np.delete(np.arange(cfg.clients), cid)
        chosen = torch.randperm(len(others), generator=torch_gen(cfg.seed, "neighbours", cid, r))
        return sorted([cid] + others[chosen[: cfg.neighbours].numpy()].tolist())

    def downlink(self, srv, r, clients):
        flat, store = srv.flat, srv.store
        out = []
        for cid in clients:
            cid = int(cid)
            group = self.neighbours(srv.cfg, cid, r)
            avg = holder_average(flat, [store.get("weights", j) for j in group], [store.get("shared", j) for j in group])
            own = make_mask(flat, store.get("mask", cid))
            out.append({"values": fields.values(take(avg, own.send_idx.cpu())),
                        "mask": fields.state(store.get("mask", cid))})
        return out

    @staticmethod
    def prune_rate(r: int, *, rounds: int, a: float) -> float:
        return a / 2 * (1 + math.cos(math.pi * r / rounds))

    def client_update(self, wk, cid, msg, x, y, r):
        flat, cfg = wk.flat, wk.cfg
        old = msg["mask"].to(wk.device)
        mask = load_masked(flat, msg["values"], old)
        w = flat.flat.detach()
        loss = local_train(flat, x, y, spec=wk.spec, multiplier=mask.multiplier,
                           gen=torch_gen(cfg.seed, "shuffle", cid, r), round_=r)
        new = self.prune_regrow(flat, old, x, y, cid=cid, r=r, cfg=cfg)
        return {"values": fields.values(take(w, mask.send_idx)), "changes": fields.index((new ^ old).cpu())}, loss

    def prune_regrow(self, flat: FlatModel, old: torch.Tensor, x, y, *, cid: int, r: int, cfg) -> torch.Tensor:
        """Per prunable tensor: prune ceil(r_t * nnz) smallest |w|, regrow as many inactive weights."""
        rate = self.prune_rate(r, rounds=cfg.rounds, a=cfg.readjust_ratio)
        gen = torch_gen(cfg.seed, "regrow", cid, r)
        if cfg.regrow == "gradient":
            idx = torch.randperm(len(y), generator=gen)[: cfg.batch_size]
            flat.zero_grad()
            F.cross_entropy(flat.model(x[idx].to(flat.flat.device)), y[idx].to(flat.flat.device)).backward()
            score = flat.grad[flat.prunable_idx].abs().clone()
            flat.zero_grad()
        else:
            score = torch.rand(flat.n_prunable, generator=gen).to(flat.flat.device)
        w = flat.flat.detach()[flat.prunable_idx]
        new = old.clone()
        lo = 0
        for _, size in flat.prunable_layers():
            seg = slice(lo, lo + size)
            lo += size
            active = torch.nonzero(old[seg]).flatten()
            n = min(math.ceil(rate * len(active)), len(active))
            if n == 0:
                continue
            order = torch.argsort(w[seg][active].abs(), stable=True)
            layer = new[seg]
            layer[active[order[:n]]] = False
            candidates = torch.where(layer, -1.0, score[seg])  # scores are >= 0: active ones never win
            layer |= topk_mask(candidates, n)
        return new

    def aggregate(self, srv, r, updates, sizes):
        flat, store = srv.flat, srv.store
        changes, up, down = 0, [], []
        for cid, msg in updates.items():
            old, _ = apply_changes(srv, r, cid, msg, values_on="old")
            weights = torch.zeros(flat.numel)
            weights[old.send_idx.cpu()] = msg["values"]
            store.put("weights", cid, weights)
            store.put("shared", cid, old.kept)
            changes += int(msg["changes"].sum())
            up.append(old.density)  # the values went up on the mask they were trained in
            down.append(old.density)  # which is the mask they came down on
        everyone = range(srv.cfg.clients)
        srv.global_flat.copy_(holder_average(flat, [store.get("weights", j) for j in everyone],
                                             [store.get("shared", j) for j in everyone]))
        return {"mask_changes": changes, "density_up": float(np.mean(up)), "density_down": float(np.mean(down))}

    def personal_vector(self, srv, cid):
        return srv.store.get("weights", cid)
