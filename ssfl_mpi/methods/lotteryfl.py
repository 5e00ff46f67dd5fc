"""LotteryFL (Li et al. 2021; charleslipku/LotteryFL), as ALGORITHMS.md describes it.

Every client keeps a personal mask, dense at the start. A sampled client receives the global model
inside its mask; when that model's accuracy on the client's training data exceeds ACC_THRESHOLD
and its mask is denser than the floor (1 - --sparsity), it prunes PRUNE_FRACTION of its surviving
prunable weights by magnitude (never below the floor) and resets the survivors to their initial
values (the lottery-ticket rewind); then it trains inside its mask. The server averages each
coordinate over the round's clients whose mask holds it (uniform, as LotteryFL's
average_weights_with_masks) and keeps the old value where none does. A client's own model is the
global one inside its mask: that is the personalized accuracy.

Traffic: down, the values on the client's mask (the mask is the client's own: state, not
counted); up, the values on its mask and the mask's changes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import fields
from ..sparse import make_mask, n_keep, take
from ..training import local_train, predict
from ..seeding import torch_gen
from .messages import MessageMethod, apply_changes, load_masked

ACC_THRESHOLD = 0.2   # LotteryFL's acc_threshold
PRUNE_FRACTION = 0.1  # LotteryFL's prune_percent (of the surviving weights, per pruning)


class LotteryFL(MessageMethod):
    name = "lotteryfl"
    summary = "LotteryFL: personal masks pruned 10% at a time with rewind to init (Li et al. 2021)"
    shared_mask = False
    personalized = True

    def client_state(self, cfg, flat):
        return {"mask": (bool, flat.n_prunable)}

    def prepare_model(self, flat, *, cfg) -> None:
        self.initial = flat.flat.detach().clone()  # every rank: the rewind target

    def init_clients(self, srv) -> None:
        srv.store.arrays["mask"][:] = True

    def downlink(self, srv, r, clients):
        out = []
        for cid in clients:
            own = make_mask(srv.flat, srv.store.get("mask", int(cid)))
            out.append({"values": fields.values(take(srv.global_flat, own.send_idx.cpu())),
                        "mask": fields.state(own.kept)})
        return out

    def client_update(self, wk, cid, msg, x, y, r):
        flat, cfg = wk.flat, wk.cfg
        old = msg["mask"].to(wk.device)
        mask = load_masked(flat, msg["values"], old)
        w = flat.flat.detach()
        floor = n_keep(cfg.density, flat.n_prunable)
        nnz = int(old.sum())
        new = old
        if nnz > floor:
            correct, _ = predict(flat, x, y)
            if float(correct.double().mean()) > ACC_THRESHOLD:
                n = min(math.ceil(PRUNE_FRACTION * nnz), nnz - floor)
                active = torch.nonzero(old).flatten()
                order = torch.argsort(w[flat.prunable_idx][active].abs(), stable=True)
                new = old.clone()
                new[active[order[:n]]] = False
                mask = make_mask(flat, new)
                w.copy_(self.initial.to(w.device) * mask.multiplier)
        loss = local_train(flat, x, y, spec=wk.spec, multiplier=mask.multiplier,
                           gen=torch_gen(cfg.seed, "shuffle", cid, r), round_=r)
        return {"values": fields.values(take(w, mask.send_idx)), "changes": fields.index((new ^ old).cpu())}, loss

    def aggregate(self, srv, r, updates, sizes):
        flat = srv.flat
        total = torch.zeros(flat.numel, dtype=torch.float64)
        count = torch.zeros(flat.numel, dtype=torch.float64)
        changes, up, down = 0, [], []
        for cid, msg in updates.items():
            old, kept = apply_changes(srv, r, cid, msg)
            down.append(old.density)
            idx = kept.send_idx.cpu()
            total[idx] += msg["values"].double()
            count[idx] += 1.0
            changes += int(msg["changes"].sum())
            up.append(kept.density)
        held = count > 0
        srv.global_flat[held] = (total[held] / count[held]).float()
        return {"mask_changes": changes, "density_up": float(np.mean(up)), "density_down": float(np.mean(down))}

    def personal_vector(self, srv, cid):
        return srv.global_flat * make_mask(srv.flat, srv.store.get("mask", cid)).multiplier.cpu()
