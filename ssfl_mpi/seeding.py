"""Random streams derived from (seed, purpose, client, round), never from the rank or a global state."""

from __future__ import annotations

import zlib

import numpy as np
import torch

# Fixed codes: renaming a purpose must not change the streams of existing runs.
PURPOSES = {
    "init": 1,
    "partition": 2,
    "sample": 3,
    "shuffle": 4,
    "saliency": 5,
    "synthetic": 6,
    "test-split": 7,
    "mask": 8,
    "client-mask": 9,
    "regrow": 10,
    "personal-split": 11,
}


def purpose_code(purpose: str) -> int:
    """The fixed code above, or for any other name a stable one of its own (CRC-32, above 2^16), so
    that a new method's module can name its streams without editing this list."""
    if purpose in PURPOSES:
        return PURPOSES[purpose]
    return (1 << 16) + zlib.crc32(purpose.encode())


def _key(seed: int, purpose: str, ids) -> list[int]:
    return [int(seed), purpose_code(purpose), *(int(i) for i in ids)]


def np_rng(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_key(seed, purpose, ids)))


def torch_seed(seed: int, purpose: str, *ids: int) -> int:
    state = np.random.SeedSequence(_key(seed, purpose, ids)).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def torch_gen(seed: int, purpose: str, *ids: int) -> torch.Generator:
    return torch.Generator().manual_seed(torch_seed(seed, purpose, *ids))


def sample_clients(seed: int, round_: int, n_clients: int, per_round: int) -> np.ndarray:
    """The clients of one round, sorted; identical on every rank for any number of ranks."""
    chosen = np_rng(seed, "sample", round_).choice(n_clients, size=per_round, replace=False)
    return np.sort(chosen)
