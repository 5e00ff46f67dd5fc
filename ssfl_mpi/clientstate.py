"""Per-client state the server keeps between rounds (masks, personal weights, residuals).

One [K, n] array per named field, allocated when the run starts and written whole into every
checkpoint, so that a resumed run continues from exactly the state it stopped in.
"""

from __future__ import annotations

import numpy as np
import torch


class ClientStore:
    def __init__(self, spec: dict[str, tuple[type, int]], n_clients: int):
        self.spec = {name: (np.dtype(dtype), int(n)) for name, (dtype, n) in spec.items()}
        self.arrays = {name: np.zeros((n_clients, n), dtype=dtype) for name, (dtype, n) in self.spec.items()}

    def get(self, name: str, cid: int) -> torch.Tensor:
        """A view of client cid's array (writes go to the store)."""
        return torch.from_numpy(self.arrays[name][cid])

    def put(self, name: str, cid: int, value) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        self.arrays[name][cid] = value

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for name, a in arrays.items():
            self.arrays[name][...] = a


def check_arrays(spec: dict[str, tuple[type, int]], n_clients: int, arrays: dict[str, np.ndarray]) -> str | None:
    """Why checkpointed client arrays do not fit a store of this spec, or None."""
    if set(arrays) != set(spec):
        return f"its checkpoint holds client state {sorted(arrays)}, this method keeps {sorted(spec)}"
    for name, a in arrays.items():
        dtype, n = np.dtype(spec[name][0]), int(spec[name][1])
        if a.shape != (n_clients, n) or a.dtype != dtype:
            return (f"its checkpointed client state {name!r} is {a.dtype} {a.shape}, this run needs "
                    f"{dtype} {(n_clients, n)}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"its checkpointed client state {name!r} holds NaN/Inf values"
    return None
