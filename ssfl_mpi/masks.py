"""Mask builders that need no data: random (uniform, per layer, ERK), magnitude, and vote-based masks."""

from __future__ import annotations

import numpy as np
import torch

from .sparse import topk_mask


def erk_densities(shapes: list[tuple], density: float) -> np.ndarray:
    """Erdos-Renyi-Kernel layer densities (Evci et al. 2020, RigL) whose kept total is density * N.

    Layer l gets eps * sum(shape_l) / prod(shape_l), capped at 1; layers that hit the cap are
    made dense and eps is solved again for the rest, as RigL's reference implementation does.
    """
    sizes = np.array([int(np.prod(s)) for s in shapes], dtype=np.float64)
    raw = np.array([sum(s) / np.prod(s) for s in shapes], dtype=np.float64)
    dense = np.zeros(len(shapes), dtype=bool)
    target = density * sizes.sum()
    while True:
        budget = target - sizes[dense].sum()
        eps = budget / (raw[~dense] * sizes[~dense]).sum() if (~dense).any() else 0.0
        out = np.where(dense, 1.0, eps * raw)
        over = (out > 1.0) & ~dense
        if not over.any():
            return np.clip(out, 0.0, 1.0)
        dense |= over


def per_layer_random(layer_sizes: list[int], densities, gen: torch.Generator) -> torch.Tensor:
    """floor(d_l * n_l) weights kept uniformly at random inside each layer."""
    parts = []
    for size, d in zip(layer_sizes, densities):
        keep = int(np.floor(d * size + 1e-9))
        parts.append(topk_mask(torch.rand(size, generator=gen), keep))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def random_mask(layer_shapes: list[tuple], k: int, distribution: str, gen: torch.Generator) -> torch.Tensor:
    """A random mask over the prunable vector: exactly k kept (uniform) or per-layer floors."""
    sizes = [int(np.prod(s)) for s in layer_shapes]
    n = sum(sizes)
    if distribution == "uniform":
        return topk_mask(torch.rand(n, generator=gen), k)
    density = k / max(1, n)
    if distribution == "layerwise":
        return per_layer_random(sizes, [density] * len(sizes), gen)
    if distribution == "erk":
        return per_layer_random(sizes, erk_densities(layer_shapes, density), gen)
    raise ValueError(f"unknown mask distribution {distribution!r}")


def magnitude_mask(weights: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest |w| over all prunable weights (ties: lower index)."""
    return topk_mask(weights.abs(), k)


def vote_mask(votes: np.ndarray, magnitude: np.ndarray, k: int) -> np.ndarray:
    """Top-k by vote count, then by |aggregated weight|, then by lower index (FedDST's server)."""
    order = np.lexsort((np.arange(len(votes)), -np.abs(magnitude), -votes))
    kept = np.zeros(len(votes), dtype=bool)
    kept[order[:k]] = True
    return kept
