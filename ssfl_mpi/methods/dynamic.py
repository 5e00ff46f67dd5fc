"""Per-client or changing masks on the message layer: client-wise random masks, FedDST, PruneFL.

Clients are stateless, as in cross-device FL (a sampled client may never have seen the current
mask), so every downlink carries the mask the client trains in, as a counted `index` field; an
uplink carries a mask only when the client changed it (FedDST's readjustment rounds), and PruneFL's
importance scores on its reconfiguration rounds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import fields
from ..masks import magnitude_mask, random_mask, vote_mask
from ..seeding import torch_gen
from ..sparse import FlatModel, Mask, make_mask, n_keep, take, topk_mask
from ..training import local_train
from .base import MASK_DISTRIBUTION, READJUST_EVERY, READJUST_RATIO, MaskContext
from .messages import MessageMethod, load_masked
from .static import RandomStatic


class RandomClientwise(MessageMethod):
    """Every client its own random mask at the target density; the global model is their union.

    The server averages each coordinate, weighted by n_k, over the round's clients that keep it, and
    leaves the others at their previous value.
    """

    name = "random-clientwise"
    summary = "each client its own random mask; coordinates averaged over their holders"
    shared_mask = False
    options = {"mask_distribution": MASK_DISTRIBUTION}

    def label(self, cfg: dict) -> str:
        return f"{cfg['method']} ({cfg['mask_distribution']})"

    def client_mask(self, flat: FlatModel, cid: int, *, seed: int, density: float,
                    distribution: str) -> torch.Tensor:
        return random_mask(flat.prunable_shapes(), n_keep(density, flat.n_prunable), distribution,
                           torch_gen(seed, "client-mask", cid))

    def _mask_of(self, srv, cid: int) -> Mask:
        cfg = srv.cfg
        return make_mask(srv.flat, self.client_mask(srv.flat, cid, seed=cfg.seed, density=cfg.density,
                                                    distribution=cfg.mask_distribution).to(srv.flat.flat.device))

    def downlink(self, srv, r, clients):
        self._sent = {int(c): self._mask_of(srv, int(c)) for c in clients}
        return [{"values": fields.values(take(srv.global_flat, m.send_idx.cpu())), "mask": fields.index(m.kept)}
                for m in self._sent.values()]

    def client_update(self, wk, cid, msg, x, y, r):
        flat, cfg = wk.flat, wk.cfg
        mask = load_masked(flat, msg["values"], msg["mask"])
        loss = local_train(flat, x, y, spec=wk.spec, multiplier=mask.multiplier,
                           gen=torch_gen(cfg.seed, "shuffle", cid, r), round_=r)
        return {"values": fields.values(take(flat.flat.detach(), mask.send_idx))}, loss

    def _average(self, srv, r, updates, sizes, masks: dict[int, Mask]) -> list[float]:
        """n_k-weighted mean per coordinate over the clients whose mask holds it; returns densities."""
        weighted = torch.zeros(srv.flat.numel, dtype=torch.float64)
        weight = torch.zeros(srv.flat.numel, dtype=torch.float64)
        for cid, msg in updates.items():
            idx = masks[cid].send_idx.cpu()
            if msg["values"].numel() != idx.numel():
                raise RuntimeError(f"round {r}: client {cid} sent {msg['values'].numel()} values for a mask "
                                   f"of {idx.numel()}")
            weighted.index_add_(0, idx, msg["values"].double(), alpha=sizes[cid])
            weight.index_add_(0, idx, torch.full((idx.numel(),), sizes[cid], dtype=torch.float64))
        has = weight > 0
        srv.global_flat[has] = (weighted[has] / weight[has]).float()
        return [masks[cid].density for cid in updates]

    def aggregate(self, srv, r, updates, sizes):
        densities = self._average(srv, r, updates, sizes, self._sent)
        return {"density_up": float(np.mean(densities)),
                "density_down": float(np.mean([m.density for m in self._sent.values()]))}

    def personal_vector(self, srv, cid):
        """A client's own model is the global one inside its own mask."""
        return srv.global_flat * self._mask_of(srv, cid).multiplier.cpu()


class FedDST(RandomClientwise):
    """FedDST (Bibikar et al. 2022): random start, client prune-and-regrow, server vote.

    One shared mask (srv.mask). Every --readjust-every rounds each client prunes and regrows after
    training and sends its new mask; the server averages over holders, then keeps the k weights
    with the most votes (then larger |w|, then lower index) and zeroes the rest.
    """

    name = "feddst"
    summary = "FedDST: client prune-and-regrow, server vote (Bibikar et al. 2022)"
    shared_mask = True
    options = {"mask_distribution": MASK_DISTRIBUTION, "readjust_every": READJUST_EVERY,
               "readjust_ratio": READJUST_RATIO}
    regrows = True                # on readjustment rounds clients prune and regrow (FedDST)
    collects_importance = False   # or send squared-gradient importance instead (PruneFL)

    def find_mask(self, ctx: MaskContext) -> Mask:
        return RandomStatic().find_mask(ctx)

    def readjusts(self, r: int, *, every: int) -> bool:
        return r % every == 0

    @staticmethod
    def prune_fraction(r: int, *, rounds: int, ratio: float) -> float:
        """alpha_r = ratio/2 * (1 + cos(pi r / R)): cosine decay to 0 at the last round."""
        return ratio / 2 * (1 + math.cos(math.pi * r / rounds))

    @staticmethod
    def readjust(flat: FlatModel, kept: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                 fraction: float, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """Prune the `fraction` smallest-|w| active weights, regrow as many by |gradient| (at 0).

        The gradient is taken on one shuffled minibatch at the pruned weights, in train mode.
        """
        before = kept.to(flat.flat.device)
        kept = before.clone()
        n_change = min(int(round(fraction * int(kept.sum()))), int((~before).sum()))
        if n_change == 0:
            return kept
        w = flat.flat.detach()[flat.prunable_idx]
        active = torch.nonzero(kept).flatten()
        order = torch.argsort(w[active].abs(), stable=True)
        kept[active[order[:n_change]]] = False
        idx = torch.randperm(len(y), generator=gen)[:batch_size]
        model = flat.model
        flat.zero_grad()
        F.cross_entropy(model(x[idx].to(flat.flat.device)), y[idx].to(flat.flat.device)).backward()
        g = flat.grad[flat.prunable_idx].abs()
        flat.zero_grad()
        # Only weights inactive before this readjustment can grow (regrowing a just-pruned one
        # would only reset it to zero); gradient magnitudes are >= 0, so -1 excludes.
        g[before] = -1.0
        grow = topk_mask(g, n_change)
        kept |= grow
        flat.flat.detach()[flat.prunable_idx[grow]] = 0.0
        return kept

    def downlink(self, srv, r, clients):
        return {"values": fields.values(take(srv.global_flat, srv.mask.send_idx)),
                "mask": fields.index(srv.mask.kept)}

    def client_update(self, wk, cid, msg, x, y, r):
        flat, cfg = wk.flat, wk.cfg
        mask = load_masked(flat, msg["values"], msg["mask"])
        readjust = self.readjusts(r, every=cfg.readjust_every)
        grad_sq = torch.zeros_like(flat.flat) if readjust and self.collects_importance else None
        loss = local_train(flat, x, y, spec=wk.spec, multiplier=mask.multiplier,
                           gen=torch_gen(cfg.seed, "shuffle", cid, r), round_=r, grad_sq=grad_sq)
        reply = {}
        if readjust and self.regrows:
            fraction = self.prune_fraction(r, rounds=cfg.rounds, ratio=cfg.readjust_ratio)
            new = self.readjust(flat, mask.kept, x, y, fraction=fraction, batch_size=cfg.batch_size,
                                gen=torch_gen(cfg.seed, "regrow", cid, r))
            mask = make_mask(flat, new)
            reply["mask"] = fields.index(new)
        reply["values"] = fields.values(take(flat.flat.detach(), mask.send_idx))
        if grad_sq is not None:
            reply["importance"] = fields.extra(grad_sq[flat.prunable_idx])
        return reply, loss

    def aggregate(self, srv, r, updates, sizes):
        flat = srv.flat
        masks = {cid: make_mask(flat, msg["mask"]) if "mask" in msg else srv.mask for cid, msg in updates.items()}
        down = srv.mask.density
        densities = self._average(srv, r, updates, sizes, masks)
        changes = 0
        if self.readjusts(r, every=srv.cfg.readjust_every):
            votes = np.zeros(flat.n_prunable, dtype=np.int64)
            importance = np.zeros(flat.n_prunable, dtype=np.float64)
            for cid, msg in updates.items():
                votes += masks[cid].kept.cpu().numpy()
                if "importance" in msg:
                    importance += sizes[cid] * msg["importance"].double().numpy()
            kept = self.server_mask(votes=votes, weights=srv.global_flat[flat.prunable_idx.cpu()].numpy(),
                                    importance=importance / max(sum(sizes.values()), 1),
                                    k=n_keep(srv.cfg.density, flat.n_prunable))
            changes = int((torch.from_numpy(kept) != srv.mask.kept.cpu()).sum())
            srv.mask = make_mask(flat, torch.from_numpy(kept))
            srv.global_flat.mul_(srv.mask.multiplier.cpu())
        return {"mask_changes": changes, "density_up": float(np.mean(densities)), "density_down": down}

    def server_mask(self, *, votes: np.ndarray, weights: np.ndarray, importance, k: int) -> np.ndarray:
        return vote_mask(votes, weights, k)

    def personal_vector(self, srv, cid):
        return None


class PruneFL(FedDST):
    """PruneFL (Jiang et al. 2022): initial pruning on one client, then periodic reconfiguration.

    Importance of a weight is its squared gradient summed over local steps (pruned weights
    included), averaged over the round's clients by n_k; each weight costs the same to send
    here (one float32), so "importance per unit cost" is importance and the top-k are kept.
    """

    name = "prunefl"
    summary = "PruneFL: one client prunes, periodic importance reconfiguration (Jiang et al. 2022)"
    long_setup = True
    options = {"readjust_every": READJUST_EVERY}
    regrows = False
    collects_importance = True

    def label(self, cfg: dict) -> str:
        return "prunefl"

    def find_mask(self, ctx: MaskContext) -> Mask:
        """Client 0 trains the dense model and prunes by magnitude; its rank shares the result.

        Sums with zeros from every other rank are exact, so an Allreduce is a broadcast here.
        """
        flat = ctx.flat
        votes = np.zeros(flat.n_prunable, dtype=np.int64)
        weights = np.zeros(flat.numel, dtype=np.float32)
        if 0 in ctx.clients:
            x, y = ctx.clients[0]
            local_train(flat, x, y, spec=ctx.spec, multiplier=None, gen=torch_gen(ctx.seed, "shuffle", 0, 0))
            mask = make_mask(flat, magnitude_mask(flat.flat.detach()[flat.prunable_idx], ctx.k))
            votes[:] = mask.kept.cpu().numpy()
            weights[:] = (flat.flat.detach() * mask.multiplier).cpu().numpy()
        ctx.reduce_sum_(votes)
        ctx.reduce_sum_(weights)
        flat.flat.detach().copy_(torch.from_numpy(weights))
        return make_mask(flat, torch.from_numpy(votes > 0))

    def server_mask(self, *, votes: np.ndarray, weights: np.ndarray, importance, k: int) -> np.ndarray:
        return topk_mask(torch.from_numpy(importance), k).numpy()

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        """Client 0's pruned model goes up once, with its mask; round 1 carries it down."""
        return fields.size({"values": ("values", mask.payload),
                            "mask": ("index", (n_prunable, mask.n_kept))}), 0
