"""Shared masks fixed before round 1, values only on the wire: FedAvg, SSFL and its ablations.

Each finds its mask once (`find_mask`); the static round protocol does the rest.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import RunError
from ..masks import magnitude_mask, random_mask
from ..saliency import (INPUTS, SCORES, WindowSum, check_client_count, client_saliency, client_weights,
                        limbs_to_float, normalize_limbs, topk_limbs)
from ..seeding import torch_gen
from ..sparse import Mask, dense_mask, make_mask
from .base import MASK_DISTRIBUTION, MaskContext, Method, Option

# SSFL's own settings (snip-single shares them).
SALIENCY_OPTIONS = {
    "saliency_batches": Option(1, "minibatches Q per client for the saliency", minimum=1),
    "saliency_weighting": Option("data-size", "client score weights: n_k/n or uniform",
                                 choices=("data-size", "uniform")),
    "saliency_score": Option("abs-mean-grad", "Q > 1: |mean_q g_q * w| over the first Q minibatches of one "
                             "shuffle, or the reference's mean_q |g_q * w| over Q fresh first batches",
                             choices=SCORES),
    "saliency_input": Option("plain", "score unaugmented minibatches, or augmented ones as the reference's "
                             "training loader gives them", choices=INPUTS),
    "topk_ties": Option("exact-k", "the mask: exactly k weights (ties by index), or also every "
                        "tie at the k-th score (the reference)", choices=("exact-k", "keep-all")),
}

class FedAvg(Method):
    name = "fedavg"
    summary = "dense FedAvg (McMahan et al. 2017)"
    sparse = False

    def label(self, cfg: dict) -> str:
        return "fedavg (dense)"

    def find_mask(self, ctx: MaskContext) -> Mask:
        return dense_mask(ctx.flat)


class SSFL(Method):
    """One global mask from data-size-weighted client saliency at the shared initial weights."""

    name = "ssfl"
    summary = "Salient Sparse FL: one global mask from size-weighted client |g*w| saliency"
    long_setup = True
    options = SALIENCY_OPTIONS

    def label(self, cfg: dict) -> str:
        if cfg["method"] != "ssfl":
            return cfg["method"]
        knobs = []
        if cfg["saliency_weighting"] != "data-size":
            knobs.append(f"{cfg['saliency_weighting']} weights")
        if cfg["saliency_batches"] != 1:
            knobs.append(f"Q={cfg['saliency_batches']}")
        # Files of schema 1 lack these keys: they ran this project's defaults.
        for key, default in (("saliency_score", "abs-mean-grad"), ("saliency_input", "plain"),
                             ("topk_ties", "exact-k")):
            if cfg.get(key, default) != default:
                knobs.append(cfg[key])
        return "ssfl" + (f" ({', '.join(knobs)})" if knobs else "")

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
        acc = WindowSum(ctx.flat.n_prunable)  # one pass: each client scored once, nothing kept
        for cid in scored:
            s = self._scores(ctx, cid, weights[cid])
            if not np.isfinite(s).all():
                raise RunError(f"the saliency of client {cid} is not finite (NaN or Inf at the initial "
                               f"weights): check its data for NaN/Inf values")
            acc.add(s)
        top = ctx.reduce_max(float(acc.top) if acc.top is not None else -math.inf)
        acc.align(int(top) if math.isfinite(top) else 0)  # every rank on the window of the largest score
        total = acc.total
        ctx.reduce_sum_(total)
        total = normalize_limbs(total)
        kept = topk_limbs(total, ctx.k, ties=ctx.topk_ties)
        scores = limbs_to_float(total, acc.exponent).astype(np.float32)
        return make_mask(ctx.flat, torch.from_numpy(kept), scores=scores)

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        """One-time deployment traffic: each client's dense float32 scores up, a bitmask down."""
        return n_clients * n_prunable * 4, n_clients * ((n_prunable + 7) // 8)

    def mask_scores_attrs(self, cfg) -> dict:
        return {"what": "sum over clients of p_k * saliency_k (float32 of the exact fixed-point sum)",
                "weighting": self._weighting(cfg), "score": cfg.saliency_score, "input": cfg.saliency_input,
                "batches": cfg.saliency_batches, "topk_ties": cfg.topk_ties}

    def _weighting(self, cfg) -> str:
        return cfg.saliency_weighting


class SnipSingle(SSFL):
    """SSFL's saliency from client 0's data alone: the ablation of federating the scores."""

    name = "snip-single"
    summary = "SSFL's mask from client 0's saliency alone (ablation)"

    def _weights(self, ctx: MaskContext) -> np.ndarray:
        w = np.zeros(len(ctx.client_sizes))
        w[0] = 1.0
        return w

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        return n_prunable * 4, n_clients * ((n_prunable + 7) // 8)

    def _weighting(self, cfg) -> str:
        return "client 0 only"


class RandomStatic(Method):
    """A random shared mask (uniform over all weights, uniform per layer, or ERK), drawn from the seed."""

    name = "random"
    summary = "a random shared mask (--mask-distribution)"
    options = {"mask_distribution": MASK_DISTRIBUTION}

    def label(self, cfg: dict) -> str:
        return f"{cfg['method']} ({cfg['mask_distribution']})" if cfg["method"] == "random" else cfg["method"]

    def find_mask(self, ctx: MaskContext) -> Mask:
        kept = random_mask(ctx.flat.prunable_shapes(), ctx.k, ctx.mask_distribution,
                           torch_gen(ctx.seed, "mask"))
        return make_mask(ctx.flat, kept)  # every party derives it from the seed: no setup traffic


class Magnitude(RandomStatic):
    """The largest |w| of the shared initial weights."""

    name = "magnitude"
    summary = "the largest |w| of the shared initial weights"
    options = {}

    def find_mask(self, ctx: MaskContext) -> Mask:
        return make_mask(ctx.flat, magnitude_mask(ctx.flat.flat.detach()[ctx.flat.prunable_idx], ctx.k))
