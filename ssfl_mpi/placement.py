"""Which worker rank trains which of a round's clients.

`static`: client k always on rank 1 + (k mod W), where its data were loaded. `balanced` (the
default): each round's sampled clients are placed longest-processing-time first by their work (the
number of local minibatches, ceil(n_k / B) x E) on the least loaded worker, ties to the lower
client id and the lower rank. Results do not depend on the placement (every client's training
depends only on (seed, client, round), and the server sums in client-id order), so the runs are
bit-identical either way; only the time of the busiest rank changes.
"""

from __future__ import annotations

import heapq

import numpy as np

PLACEMENTS = ("balanced", "static")


def static_home(n_clients: int, workers: int) -> np.ndarray:
    """Client k lives on rank 1 + (k mod W) for the whole run (where mask discovery scores it)."""
    return 1 + np.arange(n_clients) % workers


def work(sizes: np.ndarray, *, batch_size: int, epochs: int) -> np.ndarray:
    """Local minibatches of each client in one round."""
    return -(-np.asarray(sizes, dtype=np.int64) // batch_size) * epochs


def lpt(clients: np.ndarray, cost: np.ndarray, workers: int, *, first: int = 1) -> np.ndarray:
    """Ranks (first..W) for `clients`, in their order: heaviest first onto the least loaded rank."""
    order = sorted(range(len(clients)), key=lambda i: (-int(cost[i]), int(clients[i])))
    heap = [(0, rank) for rank in range(first, workers + 1)]
    ranks = np.zeros(len(clients), dtype=np.int64)
    for i in order:
        load, rank = heapq.heappop(heap)
        ranks[i] = rank
        heapq.heappush(heap, (load + int(cost[i]), rank))
    return ranks


def place(kind: str, clients: np.ndarray, *, sizes: np.ndarray, batch_size: int, epochs: int,
          workers: int, server: bool = False) -> np.ndarray:
    """With server=True rank 0 trains clients too (balanced placement only)."""
    if kind == "static":
        return static_home(len(sizes), workers)[clients]
    return lpt(clients, work(sizes[clients], batch_size=batch_size, epochs=epochs), workers,
               first=0 if server else 1)


def busiest_over_ideal(ranks: np.ndarray, cost: np.ndarray, workers: int) -> float:
    """The busiest worker's work divided by the round's work spread evenly over the workers."""
    loads = np.bincount(ranks, weights=cost, minlength=workers + 1)[1:]
    return float(loads.max() / (cost.sum() / workers))
