"""SSFL saliency |dL/dw * w| on a client's data, and its order-free fixed-point aggregation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .sparse import FlatModel

FIXED_POINT_BITS = 52  # the global maximum maps to 2**52: exact in float64, far from int64 overflow


def client_saliency(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                    n_batches: int, gen: torch.Generator) -> torch.Tensor:
    """|g * w| over the prunable weights, g the mean gradient of the first Q shuffled minibatches.

    Taken in eval mode at the current (initial) weights, as the reference does. float64 [n_prunable].
    """
    model = flat.model
    was_training = model.training
    model.eval()
    device = flat.flat.device
    order = torch.randperm(len(y), generator=gen)
    batches = [order[i: i + batch_size] for i in range(0, len(y), batch_size)][:n_batches]
    flat.zero_grad()
    for idx in batches:
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device)) / len(batches)
        loss.backward()
    idx = flat.prunable_idx
    scores = (flat.grad[idx] * flat.flat.detach()[idx]).abs().double()
    flat.zero_grad()
    model.train(was_training)
    return scores


def client_weights(sizes: np.ndarray, weighting: str) -> np.ndarray:
    """p_k = n_k / n (the paper) or 1/K (the reference code's plain mean)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if weighting == "uniform":
        return np.full(len(sizes), 1.0 / len(sizes))
    return sizes / sizes.sum()


def fixed_point_exponent(global_max: float) -> int:
    """Power of two that maps the largest weighted score to at most 2**FIXED_POINT_BITS."""
    if not global_max > 0:
        return 0
    return FIXED_POINT_BITS - math.ceil(math.log2(global_max))


def quantize(weighted: torch.Tensor, exponent: int) -> np.ndarray:
    """Weighted float64 scores -> int64 fixed point; integer sums do not depend on their order."""
    scaled = torch.ldexp(weighted, torch.tensor(float(exponent), dtype=torch.float64))
    return torch.round(scaled).to(torch.int64).cpu().numpy()
