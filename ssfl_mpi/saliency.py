"""SSFL saliency |dL/dw * w| on a client's data, and its exact, order-free sum over clients.

The sum, in one pass over the clients: every weighted score is cut at fixed absolute bit positions
into 32-bit chunks (chunk j holds the bits of weight 2^(32j) .. 2^(32j+31)), and each rank adds
up, per weight, the chunks inside a window of N_LIMBS = 5 chunks whose top holds the largest
score it has seen (the window moves up, dropping its lowest chunks, when a larger one comes).
Each chunk is an exact int64 sum of 32-bit pieces, and a piece depends only on its score, not on
the window or on the order of the clients; at the end the ranks agree on the global window (the
one of the largest score anywhere) and one Allreduce(SUM) adds their chunks. The result is the
sum of every score cut off below the global window's bottom (at least 128 bits below the largest
score's leading bit), the same for any number of ranks and any client order, and no chunk can
overflow while fewer than 2^31 clients contribute. Earlier versions needed the global maximum
first (a max pass and a sum pass), so they kept every client's scores in between or scored twice.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError
from .lifecycle import alive
from .sparse import FlatModel

SCORES = ("abs-mean-grad", "mean-abs")
INPUTS = ("plain", "augmented")
LIMB_BITS = 32
N_LIMBS = 5
MAX_CLIENTS = 2 ** (63 - LIMB_BITS) - 1  # K pieces of < 2^32 (plus carries) stay below 2^63


def client_saliency(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                    n_batches: int, gen: torch.Generator, score: str = "abs-mean-grad",
                    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
                    ) -> torch.Tensor:
    """Saliency of every prunable weight for one client: float64 [n_prunable].

    Taken in eval mode at the current (initial) weights, cross-entropy loss, as the reference.
    - "abs-mean-grad": one shuffle of the client's data, its first Q minibatches (fewer if the
      client has fewer), |mean_q g_q * w| (SNIP-style gradient accumulation).
    - "mean-abs": the reference's: Q times the first minibatch of a fresh shuffle (batches may
      overlap, Q is not capped), mean_q |g_q * w|.
    `augment`, when given, transforms each minibatch as local training does (the reference scores
    the first batch of the client's augmented training loader).
    """
    if score not in SCORES:
        raise ValueError(f"saliency score {score!r} not in {SCORES}")
    model = flat.model
    was_training = model.training
    model.eval()
    device = flat.flat.device
    idx = flat.prunable_idx
    w_abs = flat.flat.detach()[idx].abs_()
    if score == "abs-mean-grad":
        order = torch.randperm(len(y), generator=gen)
        batches = [order[i: i + batch_size] for i in range(0, len(y), batch_size)][:n_batches]
    else:
        batches = [torch.randperm(len(y), generator=gen)[:batch_size] for _ in range(n_batches)]
    flat.zero_grad()
    total = None
    for b in batches:
        xb = x[b] if augment is None else augment(x[b], gen)
        loss = F.cross_entropy(model(xb.to(device)), y[b].to(device))
        alive()
        if score == "abs-mean-grad":
            (loss / len(batches)).backward()
            continue
        loss.backward()
        s = torch.index_select(flat.grad, 0, idx).abs_().mul_(w_abs).double()
        total = s if total is None else total.add_(s)
        flat.zero_grad()
    if score == "abs-mean-grad":
        total = torch.index_select(flat.grad, 0, idx).abs_().mul_(w_abs).double()
    elif len(batches) > 1:
        total /= len(batches)
    flat.zero_grad()
    model.train(was_training)
    return total


def client_weights(sizes: np.ndarray, weighting: str) -> np.ndarray:
    """p_k = n_k / n (the paper) or 1/K (the reference code's plain mean)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if weighting == "uniform":
        return np.full(len(sizes), 1.0 / len(sizes))
    return sizes / sizes.sum()


def check_client_count(n: int) -> None:
    if n > MAX_CLIENTS:
        raise UsageError(f"{n} clients contribute saliency; the exact int64 sum holds at most "
                         f"{MAX_CLIENTS:,} (2^31 - 1)")


def top_chunk(value: float) -> int:
    """The chunk that holds the leading bit of a positive finite value."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"top_chunk of {value}")
    return (math.frexp(value)[1] - 1) // LIMB_BITS


class WindowSum:
    """The running exact sum of non-negative float64 vectors, one pass, any order (module docstring).

    total[i] is chunk top - i (value = sum_i total[i] 2^(32 (top - i))); `exponent` = 32 (top + 1)
    bounds every score added. Scratch buffers are allocated once: fresh 100 MB temporaries per
    client cost more in page faults than the arithmetic (measured on ResNet-18).
    """

    def __init__(self, n: int):
        self.top: int | None = None  # None until a nonzero score arrives
        self.total = np.zeros((N_LIMBS, n), dtype=np.int64)
        self._scratch = None

    @property
    def exponent(self) -> int:
        return LIMB_BITS * (self.top + 1) if self.top is not None else 0

    def align(self, top: int) -> None:
        """Move the window up to `top` (never down): the chunks that fall below it are dropped."""
        if self.top is not None and top < self.top:
            raise ValueError(f"window top {top} below the largest score's chunk {self.top}")
        shift = N_LIMBS if self.top is None else min(N_LIMBS, top - self.top)
        if shift:
            self.total[shift:] = self.total[: N_LIMBS - shift].copy()
            self.total[:shift] = 0
        self.top = top

    def add(self, scores: np.ndarray) -> None:
        n = self.total.shape[1]
        if np.shape(scores) != (n,):
            raise ValueError(f"WindowSum.add: {np.shape(scores)} scores for {n} weights")
        largest = float(scores.max()) if n else 0.0
        if not largest >= 0 or not math.isfinite(largest) or (n and float(scores.min()) < 0):
            raise ValueError("WindowSum.add: scores must be finite and non-negative")
        if largest == 0:
            return
        top = top_chunk(largest)
        if self.top is None or top > self.top:
            self.align(top)
        if self._scratch is None:
            self._scratch = (np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64),
                             np.empty(n, dtype=np.int64))
        y, part, whole = self._scratch
        np.ldexp(scores, -self.exponent, out=y)  # a power of two: exact; y in [0, 1)
        for i in range(N_LIMBS):  # every step exact in float64: scale by 2^32, split off the integer part
            y *= 2.0 ** LIMB_BITS
            np.floor(y, out=part)
            np.copyto(whole, part, casting="unsafe")  # integral values < 2^32: exact
            self.total[i] += whole
            y -= part


def to_limbs(scores: np.ndarray | torch.Tensor, top: int) -> np.ndarray:
    """Non-negative float64 scores < 2^(32 (top + 1)) as int64 [N_LIMBS, n] chunks of the window
    whose top chunk is `top` (bits below its bottom dropped)."""
    acc = WindowSum(np.size(scores))
    acc.align(top)
    acc.add(np.asarray(scores, dtype=np.float64))
    if acc.top != top:
        raise ValueError(f"to_limbs: scores reach chunk {acc.top}, above the window's top {top}")
    return acc.total


def normalize_limbs(total: np.ndarray) -> np.ndarray:
    """Carry so that every limb but the first is < 2^32: then the limbs compare lexicographically."""
    out = total.copy()
    for i in range(N_LIMBS - 1, 0, -1):
        carry = out[i] >> LIMB_BITS
        out[i] &= (1 << LIMB_BITS) - 1
        out[i - 1] += carry
    return out


def limbs_to_float(total: np.ndarray, exponent: int) -> np.ndarray:
    """The (normalized) fixed-point sum as float64, rounded: for storage and plots, not for ranking."""
    out = np.zeros(total.shape[1], dtype=np.float64)
    for i in range(N_LIMBS - 1, -1, -1):  # smallest first: fewer roundings
        out += np.ldexp(total[i].astype(np.float64), exponent - LIMB_BITS * (i + 1))
    return out


def topk_limbs(total: np.ndarray, k: int, *, ties: str = "exact-k") -> np.ndarray:
    """Bool mask of the k largest exact sums (normalized limbs).

    ties "exact-k": exactly k, equal sums broken by the lower index; "keep-all": also every
    further entry equal to the k-th largest (the reference's `score >= threshold`).

    A float64 view v of the sums (relative error < 2^-50) settles all but a thin band around the
    k-th value t: entries with v > t (1 + 2^-45) are in, those below t (1 - 2^-45) out; only the
    band is ranked exactly, by limbs then index.
    """
    n = total.shape[1]
    if not 0 <= k <= n:
        raise ValueError(f"top-k: k={k} outside [0, {n}]")
    if ties not in ("exact-k", "keep-all"):
        raise ValueError(f"unknown tie rule {ties!r}")
    keep = np.zeros(n, dtype=bool)
    if k == 0:
        return keep
    v = limbs_to_float(total, 0)
    t = float(torch.topk(torch.from_numpy(v), k, sorted=False).values.min())
    band = 2.0 ** -45
    sure = v > t * (1 + band)
    border = np.flatnonzero((v >= t * (1 - band)) & ~sure)
    need = k - int(sure.sum())
    keep |= sure
    sub = total[:, border]
    # lexsort is stable and sorts by the last key first: descending sum, then ascending index.
    order = np.lexsort(tuple(-sub[i] for i in range(N_LIMBS - 1, -1, -1)))
    keep[border[order[:need]]] = True
    if ties == "keep-all" and need > 0:
        kth = sub[:, order[need - 1]]
        rest = order[need:]
        keep[border[rest[np.all(sub[:, rest] == kth[:, None], axis=0)]]] = True
    return keep
