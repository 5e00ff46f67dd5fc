"""Federated methods as small strategy objects: how each finds and changes its mask. No MPI inside.

Static methods (fedavg, ssfl, random, magnitude, snip-single) fix one shared mask before round 1
and travel values only. Dynamic ones (random-clientwise, feddst, prunefl) have per-client or
changing masks; the runtime sends their messages through `codec` and calls the hooks below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import codec
from .errors import RunError
from .masks import magnitude_mask, random_mask, vote_mask
from .saliency import (LimbSum, check_client_count, client_saliency, client_weights, limbs_to_float,
                       normalize_limbs, scale_exponent, topk_limbs)
from .seeding import torch_gen
from .sparse import FlatModel, Mask, dense_mask, make_mask, n_keep, topk_mask
from .training import LocalSpec, local_train

SCORE_CACHE_BYTES = 1 << 30  # per rank: client scores kept between the max and the sum pass


@dataclass(frozen=True, kw_only=True)
class MaskContext:
    """What mask discovery may use on one rank; the reductions are injected by the runtime."""

    flat: FlatModel
    clients: dict  # client id -> (x, y): this rank's clients only
    client_sizes: np.ndarray  # n_k of all K clients
    seed: int
    density: float
    batch_size: int
    saliency_batches: int = 1
    saliency_weighting: str = "data-size"
    saliency_score: str = "abs-mean-grad"
    saliency_augment: Callable | None = None  # (x, gen) -> x: score augmented minibatches
    topk_ties: str = "exact-k"
    mask_distribution: str = "uniform"
    spec: LocalSpec | None = None  # local training, for methods that train before round 1
    reduce_max: Callable[[float], float] = lambda v: v
    reduce_sum_: Callable[[np.ndarray], np.ndarray] = lambda a: a

    @property
    def k(self) -> int:
        return n_keep(self.density, self.flat.n_prunable)


class FedAvg:
    name = "fedavg"
    sparse = False
    dynamic = False
    shared_mask = True

    def find_mask(self, ctx: MaskContext) -> Mask:
        return dense_mask(ctx.flat)

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        return 0, 0


class SSFL:
    """One global mask from data-size-weighted client saliency at the shared initial weights."""

    name = "ssfl"
    sparse = True
    dynamic = False
    shared_mask = True

    def _weights(self, ctx: MaskContext) -> np.ndarray:
        return client_weights(ctx.client_sizes, ctx.saliency_weighting)

    def _scores(self, ctx: MaskContext, cid: int, weight: float) -> np.ndarray:
        x, y = ctx.clients[cid]
        s = client_saliency(ctx.flat, x, y, batch_size=ctx.batch_size, n_batches=ctx.saliency_batches,
                            gen=torch_gen(ctx.seed, "saliency", cid), score=ctx.saliency_score,
                            augment=ctx.saliency_augment)
        return (s * weight).cpu().numpy()

    def find_mask(self, ctx: MaskContext) -> Mask:
        weights = self._weights(ctx)
        check_client_count(int(np.count_nonzero(weights)))
        scored = [cid for cid in sorted(ctx.clients) if weights[cid] > 0]
        # Every client's scores go onto one global fixed-point scale, so its exponent must be known
        # first: keep the scores if they fit in SCORE_CACHE_BYTES, else compute them twice (they are
        # deterministic, so the second pass sees exactly what the first did).
        cache = len(scored) * ctx.flat.n_prunable * 8 <= SCORE_CACHE_BYTES
        kept_scores = {}
        local_max = 0.0
        for cid in scored:
            s = self._scores(ctx, cid, weights[cid])
            if not np.isfinite(s).all():
                raise RunError(f"the saliency of client {cid} is not finite (NaN or Inf at the initial "
                               f"weights): check its data for NaN/Inf values")
            local_max = max(local_max, float(s.max()) if s.size else 0.0)
            if cache:
                kept_scores[cid] = s
        exponent = scale_exponent(ctx.reduce_max(local_max))
        acc = LimbSum(ctx.flat.n_prunable, exponent)
        for cid in scored:
            acc.add(kept_scores.pop(cid) if cache else self._scores(ctx, cid, weights[cid]))
        total = acc.total
        ctx.reduce_sum_(total)
        total = normalize_limbs(total)
        kept = topk_limbs(total, ctx.k, ties=ctx.topk_ties)
        scores = limbs_to_float(total, exponent).astype(np.float32)
        return make_mask(ctx.flat, torch.from_numpy(kept), scores=scores)

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        """One-time deployment traffic: each client's dense float32 scores up, a bitmask down."""
        return n_clients * n_prunable * 4, n_clients * ((n_prunable + 7) // 8)


class SnipSingle(SSFL):
    """SSFL's saliency from client 0's data alone: the ablation of federating the scores."""

    name = "snip-single"

    def _weights(self, ctx: MaskContext) -> np.ndarray:
        w = np.zeros(len(ctx.client_sizes))
        w[0] = 1.0
        return w

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        return n_prunable * 4, n_clients * ((n_prunable + 7) // 8)


class RandomStatic:
    """A random shared mask (uniform over all weights, uniform per layer, or ERK), drawn from the seed."""

    name = "random"
    sparse = True
    dynamic = False
    shared_mask = True

    def find_mask(self, ctx: MaskContext) -> Mask:
        kept = random_mask(ctx.flat.prunable_shapes(), ctx.k, ctx.mask_distribution,
                           torch_gen(ctx.seed, "mask"))
        return make_mask(ctx.flat, kept)

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        return 0, 0  # every party derives it from the seed


class Magnitude(RandomStatic):
    """The largest |w| of the shared initial weights."""

    name = "magnitude"

    def find_mask(self, ctx: MaskContext) -> Mask:
        return make_mask(ctx.flat, magnitude_mask(ctx.flat.flat.detach()[ctx.flat.prunable_idx], ctx.k))


class RandomClientwise:
    """Every client its own random mask at the target density; the global model is their union."""

    name = "random-clientwise"
    sparse = True
    dynamic = True
    shared_mask = False
    client_regrows = False  # clients change their mask on readjustment rounds (FedDST)
    collects_importance = False  # clients send squared-gradient importance then (PruneFL)

    def find_mask(self, ctx: MaskContext) -> Mask:
        return dense_mask(ctx.flat)

    def client_mask(self, flat: FlatModel, cid: int, *, seed: int, density: float,
                    distribution: str) -> torch.Tensor:
        return random_mask(flat.prunable_shapes(), n_keep(density, flat.n_prunable), distribution,
                           torch_gen(seed, "client-mask", cid))

    def readjusts(self, r: int, *, every: int) -> bool:
        return False

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        return 0, 0


class FedDST(RandomClientwise):
    """FedDST (Bibikar et al. 2022): random start, client prune-and-regrow, server vote."""

    name = "feddst"
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

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        return 0, 0


class PruneFL(FedDST):
    """PruneFL (Jiang et al. 2022): initial pruning on one client, then periodic reconfiguration.

    Importance of a weight is its squared gradient summed over local steps (pruned weights
    included), averaged over the round's clients by n_k; each weight costs the same to send
    here (one float32), so "importance per unit cost" is importance and the top-k are kept.
    """

    name = "prunefl"
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


METHODS = {m.name: m for m in (FedAvg(), SSFL(), SnipSingle(), RandomStatic(), Magnitude(),
                               RandomClientwise(), FedDST(), PruneFL())}
