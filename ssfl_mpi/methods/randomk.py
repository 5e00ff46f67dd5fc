"""Random-k update sparsification (Konecny et al. 2016's random mask; Wangni et al. 2018 unbiased).

The model stays dense. A client trains, then sends k = floor(density * N) entries of its update
(new weights minus the received global ones) at positions drawn from a seed the server shares
(client, round): only the values travel, no positions, which is what random-k buys over top-k.
With --randomk-rescale the values are scaled by N/k, which makes the sent update an unbiased
estimate of the whole one (at the price of variance). The server adds the n_k-weighted mean of
the sparse updates to the global model and broadcasts the dense result.
"""

from __future__ import annotations

import torch

from .. import fields
from ..seeding import torch_gen
from ..sparse import n_keep
from ..training import local_train
from .base import Option
from .messages import MessageMethod


class RandomK(MessageMethod):
    name = "random-k"
    summary = "dense model, random-k sparsified updates: values only, positions from a shared seed"
    prunes_model = False
    options = {"randomk_rescale": Option(False, "scale the sent values by N/k (an unbiased update; "
                                                "Wangni et al. 2018)")}

    def label(self, cfg: dict) -> str:
        return "random-k (rescaled)" if cfg.get("randomk_rescale") else "random-k"

    @staticmethod
    def positions(seed: int, cid: int, r: int, *, n: int, k: int) -> torch.Tensor:
        """The k positions client cid sends in round r, ascending; the server draws the same ones."""
        return torch.randperm(n, generator=torch_gen(seed, "random-k", cid, r))[:k].sort().values

    def downlink(self, srv, r, clients):
        return {"values": fields.values(srv.global_flat)}

    def client_update(self, wk, cid, msg, x, y, r):
        flat, cfg = wk.flat, wk.cfg
        start = msg["values"].to(wk.device)
        flat.flat.detach().copy_(start)
        loss = local_train(flat, x, y, spec=wk.spec, multiplier=None, gen=torch_gen(cfg.seed, "shuffle", cid, r),
                           round_=r)
        delta = (flat.flat.detach() - start).cpu()
        n = delta.numel()
        k = n_keep(cfg.density, n)
        sent = delta[self.positions(cfg.seed, cid, r, n=n, k=k)]
        if cfg.randomk_rescale and k:
            sent = sent * (n / k)
        return {"values": fields.values(sent)}, loss

    def aggregate(self, srv, r, updates, sizes):
        total = sum(sizes.values())
        n = srv.global_flat.numel()
        k = n_keep(srv.cfg.density, n)
        acc = torch.zeros(n, dtype=torch.float64)
        for cid, msg in updates.items():
            if msg["values"].numel() != k:
                raise RuntimeError(f"round {r}: client {cid} sent {msg['values'].numel()} values, not k = {k}")
            acc[self.positions(srv.cfg.seed, cid, r, n=n, k=k)] += msg["values"].double() * (sizes[cid] / total)
        srv.global_flat.copy_((srv.global_flat.double() + acc).float())
        return {"density_up": k / n, "density_down": 1.0}
