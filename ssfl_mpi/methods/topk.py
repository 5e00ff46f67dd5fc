"""Top-K update sparsification (generic; Aji & Heafield 2017, Stich et al. 2018 with error feedback).

The model stays dense. A client trains, then sends the k = floor(density * N) entries of its
update (new weights minus the received global ones) largest in magnitude, as values plus their
positions; ties go to the lower index. With --error-feedback the client first adds its residual
(what it did not send before) and keeps the new residual; the server keeps that residual for it
(checkpointed), as the client's own state. The server adds the n_k-weighted mean of the sparse
updates to the global model and broadcasts the dense result.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import fields
from ..seeding import torch_gen
from ..sparse import n_keep, topk_mask
from ..training import local_train
from .base import Option
from .messages import MessageMethod


class TopK(MessageMethod):
    name = "topk"
    summary = "dense model, top-k sparsified updates (--sparsity of the update; --error-feedback)"
    prunes_model = False
    options = {"error_feedback": Option(False, "clients add what they did not send to their next update "
                                        "(residual kept per client, checkpointed)")}

    def label(self, cfg: dict) -> str:
        return "topk (error feedback)" if cfg.get("error_feedback") else "topk (no error feedback)"

    def client_state(self, cfg, flat):
        return {"residual": (np.float32, flat.numel)} if cfg.error_feedback else {}

    def downlink(self, srv, r, clients):
        if not srv.cfg.error_feedback:
            return {"values": fields.values(srv.global_flat)}
        return [{"values": fields.values(srv.global_flat), "residual": fields.state(srv.store.get("residual", c))}
                for c in clients]

    def client_update(self, wk, cid, msg, x, y, r):
        flat, cfg = wk.flat, wk.cfg
        start = msg["values"].to(wk.device)
        flat.flat.detach().copy_(start)
        loss = local_train(flat, x, y, spec=wk.spec, multiplier=None, gen=torch_gen(cfg.seed, "shuffle", cid, r),
                           round_=r)
        delta = (flat.flat.detach() - start).cpu()
        if "residual" in msg:
            delta += msg["residual"]
        sent = topk_mask(delta.abs(), n_keep(cfg.density, delta.numel()))
        reply = {"values": fields.values(delta[sent]), "index": fields.index(sent)}
        if "residual" in msg:
            residual = delta.clone()
            residual[sent] = 0.0
            reply["residual"] = fields.state(residual)
        return reply, loss

    def aggregate(self, srv, r, updates, sizes):
        total = sum(sizes.values())
        acc = torch.zeros(srv.global_flat.numel(), dtype=torch.float64)
        for cid, msg in updates.items():
            acc[msg["index"]] += msg["values"].double() * (sizes[cid] / total)
            if "residual" in msg:
                srv.store.put("residual", cid, msg["residual"])
        srv.global_flat.copy_((srv.global_flat.double() + acc).float())
        n = srv.global_flat.numel()
        return {"density_up": n_keep(srv.cfg.density, n) / n, "density_down": 1.0}

    def personal_vector(self, srv, cid):
        return None
