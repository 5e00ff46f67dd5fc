"""What every method is: the base class whose defaults are the common case, and what mask discovery sees.

The common case is SSFL's shape: one shared mask fixed before round 1, values only on the wire, no
per-client state, no setup traffic. A method of that shape implements `find_mask` and nothing else;
the static round protocol runs it. Methods with per-client or changing masks, client state or
their own messages subclass `messages.MessageMethod` instead (see that module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..sparse import FlatModel, Mask, n_keep
from ..training import LocalSpec


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
    saliency_score: str = "abs-mean-grad"
    saliency_augment: Callable | None = None  # (x, gen) -> x: score augmented minibatches
    topk_ties: str = "exact-k"
    mask_distribution: str = "uniform"
    spec: LocalSpec | None = None  # local training, for methods that train before round 1
    reduce_max: Callable[[float], float] = lambda v: v
    reduce_sum_: Callable[[np.ndarray], np.ndarray] = lambda a: a

    @property
    def k(self) -> int:
        return n_keep(self.density, self.flat.n_prunable)


class Method:
    """A federated method. Subclasses set `name` (which registers them) and override what differs."""

    summary = ""           # one line for `run --help`
    sparse = True          # False: a dense method; --sparsity does not apply to it
    rounds = "static"      # the round protocol that runs it: static (values of one shared mask) or messages
    shared_mask = True     # all clients train in the same mask
    personalized = False   # clients keep models of their own (personal accuracy is theirs)
    long_setup = False     # mask discovery can take minutes: announce it before it starts

    def label(self, cfg: dict) -> str:
        """The row label in tables: the method and the settings of its own that tell runs apart.
        cfg is a stored config (a dict; files of older schemas may lack newer keys)."""
        return cfg["method"]

    def prepare_model(self, flat: FlatModel, *, cfg) -> None:
        """Change the freshly built initial model (same on every rank); most methods leave it."""

    def find_mask(self, ctx: MaskContext) -> Mask:
        raise NotImplementedError(f"method {getattr(self, 'name', type(self).__name__)} finds no mask")

    def readjusts(self, r: int, *, every: int) -> bool:
        """Whether the shared mask may change after round r."""
        return False

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        """One-time (up, down) traffic before round 1."""
        return 0, 0

    def check_config(self, cfg) -> str | None:
        """A one-line reason this method cannot run with cfg, or None."""
        return None
