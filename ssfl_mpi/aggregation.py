"""FedAvg aggregation of packed client vectors, summed in client-id order."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def weighted_average(rows: Sequence[torch.Tensor], sizes: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k (n_k / n) * rows[k], rows given in client-id order.

    A fixed summation order makes the result independent of which rank sent which row.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(rows) != len(sizes) or not len(rows):
        raise ValueError(f"{len(rows)} updates but {len(sizes)} client sizes")
    total = sizes.sum()
    if out is None:
        out = torch.empty_like(rows[0])
    torch.mul(rows[0], float(sizes[0] / total), out=out)
    for row, n_k in zip(rows[1:], sizes[1:]):
        out.add_(row, alpha=float(n_k / total))
    return out
