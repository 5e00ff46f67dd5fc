"""Federated methods as small strategy objects: how each finds its mask. No MPI inside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .saliency import client_saliency, client_weights, fixed_point_exponent, quantize
from .seeding import torch_gen
from .sparse import FlatModel, Mask, dense_mask, make_mask, n_keep, topk_mask


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
    reduce_max: Callable[[float], float] = lambda v: v
    reduce_sum_: Callable[[np.ndarray], np.ndarray] = lambda a: a


class FedAvg:
    name = "fedavg"
    sparse = False

    def find_mask(self, ctx: MaskContext) -> Mask:
        return dense_mask(ctx.flat)

    def setup_bytes(self, *, n_clients: int, n_prunable: int) -> tuple[int, int]:
        return 0, 0


class SSFL:
    """One global mask from data-size-weighted client saliency at the shared initial weights."""

    name = "ssfl"
    sparse = True

    def _scores(self, ctx: MaskContext, cid: int, weight: float) -> torch.Tensor:
        x, y = ctx.clients[cid]
        s = client_saliency(ctx.flat, x, y, batch_size=ctx.batch_size, n_batches=ctx.saliency_batches,
                            gen=torch_gen(ctx.seed, "saliency", cid))
        return s * weight

    def find_mask(self, ctx: MaskContext) -> Mask:
        weights = client_weights(ctx.client_sizes, ctx.saliency_weighting)
        # Two passes so that every client's scores are quantized on one global scale without
        # holding K dense score vectors in memory; the saliency is deterministic, so pass 2
        # recomputes exactly what pass 1 saw.
        local_max = 0.0
        for cid in sorted(ctx.clients):
            local_max = max(local_max, float(self._scores(ctx, cid, weights[cid]).max()))
        exponent = fixed_point_exponent(ctx.reduce_max(local_max))
        total = np.zeros(ctx.flat.n_prunable, dtype=np.int64)
        for cid in sorted(ctx.clients):
            total += quantize(self._scores(ctx, cid, weights[cid]), exponent)
        ctx.reduce_sum_(total)
        kept = topk_mask(torch.from_numpy(total), n_keep(ctx.density, ctx.flat.n_prunable))
        return make_mask(ctx.flat, kept)

    def setup_bytes(self, *, n_clients: int, n_prunable: int) -> tuple[int, int]:
        """One-time deployment traffic: each client's dense float32 scores up, a bitmask down."""
        return n_clients * n_prunable * 4, n_clients * ((n_prunable + 7) // 8)


METHODS = {m.name: m for m in (FedAvg(), SSFL())}
