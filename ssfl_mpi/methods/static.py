"""Shared masks fixed before round 1, values only on the wire: FedAvg, SSFL and its ablations.

Each finds its mask once (`find_mask`); the static round protocol does the rest.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import torch

from ..errors import RunError
from ..masks import magnitude_mask, random_mask
from ..saliency import (LimbSum, check_client_count, client_saliency, client_weights, limbs_to_float,
                        normalize_limbs, scale_exponent, topk_limbs)
from ..seeding import torch_gen
from ..sparse import Mask, dense_mask, make_mask
from .base import MaskContext, Method

SCORE_CACHE_BYTES = 1 << 30  # per rank: client scores kept in memory between the max and the sum pass


class ScoreKeeper:
    """The clients' scores between the max pass and the sum pass: in memory up to SCORE_CACHE_BYTES,
    beyond that in a scratch file in $TMPDIR (deleted when closed). A client whose scores could not
    be written (disk full) is scored again: its scores are deterministic, so the second pass sees
    exactly what the first did."""

    def __init__(self, n: int):
        self.n, self.memory, self.offsets, self.used = n, {}, {}, 0
        self.file, self.broken, self.recomputed = None, False, 0

    def __enter__(self) -> "ScoreKeeper":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()

    def put(self, cid: int, scores: np.ndarray) -> None:
        scores = np.ascontiguousarray(scores, dtype=np.float64)
        if self.used + scores.nbytes <= SCORE_CACHE_BYTES:
            self.memory[cid] = scores
            self.used += scores.nbytes
            return
        if self.broken:
            return
        try:
            if self.file is None:
                self.file = tempfile.TemporaryFile(prefix="ssfl-mpi-scores-")
            offset = self.file.seek(0, os.SEEK_END)
            self.file.write(scores.tobytes())
            self.offsets[cid] = offset
        except OSError:
            self.broken = True  # no room: the rest are scored again

    def take(self, cid: int, recompute) -> np.ndarray:
        if cid in self.memory:
            return self.memory.pop(cid)
        if cid in self.offsets:
            out = np.empty(self.n, dtype=np.float64)
            self.file.flush()
            self.file.seek(self.offsets.pop(cid))
            if self.file.readinto(memoryview(out).cast("B")) == out.nbytes:
                return out
        self.recomputed += 1
        return recompute()


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
        # Every client's scores go onto one global fixed-point scale, so its exponent must be known
        # first: the scores are kept between the max pass and the sum pass (in memory, then in a
        # scratch file), so each client is scored once.
        local_max = 0.0
        with ScoreKeeper(ctx.flat.n_prunable) as keeper:
            for cid in scored:
                s = self._scores(ctx, cid, weights[cid])
                if not np.isfinite(s).all():
                    raise RunError(f"the saliency of client {cid} is not finite (NaN or Inf at the initial "
                                   f"weights): check its data for NaN/Inf values")
                local_max = max(local_max, float(s.max()) if s.size else 0.0)
                keeper.put(cid, s)
            exponent = scale_exponent(ctx.reduce_max(local_max))
            acc = LimbSum(ctx.flat.n_prunable, exponent)
            for cid in scored:
                acc.add(keeper.take(cid, lambda: self._scores(ctx, cid, weights[cid])))
        if keeper.recomputed:
            logging.getLogger("ssfl_mpi").warning(
                "saliency: %d clients scored twice: no room in $TMPDIR to keep their scores", keeper.recomputed)
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
    summary = "SSFL's mask from client 0's saliency alone (ablation)"

    def _weights(self, ctx: MaskContext) -> np.ndarray:
        w = np.zeros(len(ctx.client_sizes))
        w[0] = 1.0
        return w

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        return n_prunable * 4, n_clients * ((n_prunable + 7) // 8)


class RandomStatic(Method):
    """A random shared mask (uniform over all weights, uniform per layer, or ERK), drawn from the seed."""

    name = "random"
    summary = "a random shared mask (--mask-distribution)"

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

    def find_mask(self, ctx: MaskContext) -> Mask:
        return make_mask(ctx.flat, magnitude_mask(ctx.flat.flat.detach()[ctx.flat.prunable_idx], ctx.k))
