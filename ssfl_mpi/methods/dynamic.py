"""Per-client or changing masks on the masked-message protocol: client-wise random masks, FedDST, PruneFL.

These run on `dynamic_rounds`: every downlink carries the mask the client trains in, an uplink
carries a mask only when the client changed it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import codec
from ..masks import magnitude_mask, random_mask, vote_mask
from ..seeding import torch_gen
from ..sparse import FlatModel, Mask, dense_mask, make_mask, n_keep, topk_mask
from ..training import local_train
from .base import MaskContext, Method
from .static import RandomStatic


class RandomClientwise(Method):
    """Every client its own random mask at the target density; the global model is their union."""

    name = "random-clientwise"
    summary = "each client its own random mask; coordinates averaged over their holders"
    rounds = "masks"
    shared_mask = False

    def label(self, cfg: dict) -> str:
        if cfg["method"] in ("random-clientwise", "feddst"):
            return f"{cfg['method']} ({cfg['mask_distribution']})"
        return cfg["method"]
    client_regrows = False  # clients change their mask on readjustment rounds (FedDST)
    collects_importance = False  # clients send squared-gradient importance then (PruneFL)

    def find_mask(self, ctx: MaskContext) -> Mask:
        return dense_mask(ctx.flat)

    def client_mask(self, flat: FlatModel, cid: int, *, seed: int, density: float,
                    distribution: str) -> torch.Tensor:
        return random_mask(flat.prunable_shapes(), n_keep(density, flat.n_prunable), distribution,
                           torch_gen(seed, "client-mask", cid))



class FedDST(RandomClientwise):
    """FedDST (Bibikar et al. 2022): random start, client prune-and-regrow, server vote."""

    name = "feddst"
    summary = "FedDST: client prune-and-regrow, server vote (Bibikar et al. 2022)"
    shared_mask = True
    client_regrows = True

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

    def server_mask(self, *, votes: np.ndarray, weights: np.ndarray, importance, k: int) -> np.ndarray:
        return vote_mask(votes, weights, k)


class PruneFL(FedDST):
    """PruneFL (Jiang et al. 2022): initial pruning on one client, then periodic reconfiguration.

    Importance of a weight is its squared gradient summed over local steps (pruned weights
    included), averaged over the round's clients by n_k; each weight costs the same to send
    here (one float32), so "importance per unit cost" is importance and the top-k are kept.
    """

    name = "prunefl"
    summary = "PruneFL: one client prunes, periodic importance reconfiguration (Jiang et al. 2022)"
    long_setup = True
    client_regrows = False
    collects_importance = True

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

    def readjusts(self, r: int, *, every: int) -> bool:
        return r % every == 0

    def server_mask(self, *, votes: np.ndarray, weights: np.ndarray, importance, k: int) -> np.ndarray:
        return topk_mask(torch.from_numpy(importance), k).numpy()

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        """Client 0's pruned model goes up once, with its mask; round 1 carries it down."""
        kind = codec.meta_kind(n_prunable, mask.n_kept)
        return codec.message_bytes(n_values=mask.payload, kind=kind, n_prunable=n_prunable,
                                   n_kept=mask.n_kept), 0
