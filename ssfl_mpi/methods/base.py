"""What every method is: the base class whose defaults are the common case, and what mask discovery sees.

The common case is SSFL's shape: one shared mask fixed before round 1, values only on the wire, no
per-client state, no setup traffic. A method of that shape implements `find_mask` and nothing else;
the static round protocol runs it. Methods with per-client or changing masks, client state or
their own messages subclass `messages.MessageMethod` instead (see that module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..sparse import FlatModel, Mask, n_keep
from ..training import LocalSpec


@dataclass(frozen=True)
class Option:
    """A setting that belongs to a method: the flag --NAME, a key of config files and presets, and a
    field of the run's config (stored flat, so result files do not depend on who declares it).

    Its type is its default's (int, float, bool or str); `choices` limits a str, `minimum`/`maximum`
    bound a number. A method states in `check_config` what needs more than one value to check.
    """

    default: object
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def kind(self) -> str:
        return type(self.default).__name__


# Options that several methods read, declared once so every declaration is the same object.
MASK_DISTRIBUTION = Option("uniform", "random masks (and feddst's start): global uniform, uniform per layer, or Erdos-Renyi-Kernel",
                           choices=("uniform", "layerwise", "erk"))
READJUST_EVERY = Option(10, "rounds between mask readjustments", minimum=1)
READJUST_RATIO = Option(0.2, "fraction of active weights pruned and regrown, cosine-decayed (DisPFL's a, "
                        "0.5 in its paper)", minimum=0.0, maximum=1.0)


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
    input_shape: tuple = ()  # one sample's shape, known on every rank (data-free methods probe with it)
    cfg: object = None  # the run's Config: a method's own options are read from it
    reduce_max: Callable[[float], float] = lambda v: v
    reduce_sum_: Callable[[np.ndarray], np.ndarray] = lambda a: a

    @property
    def k(self) -> int:
        return n_keep(self.density, self.flat.n_prunable)


class Method:
    """A federated method. Subclasses set `name` (which registers them) and override what differs."""

    summary = ""           # one line for `run --help`
    sparse = True          # False: a dense method; --sparsity does not apply to it
    prunes_model = True    # False: the model stays dense and --sparsity thins the updates (topk, random-k)
    rounds = "static"      # the round protocol that runs it: static (values of one shared mask) or messages
    shared_mask = True     # all clients train in the same mask
    personalized = False   # clients keep models of their own (personal accuracy is theirs)
    long_setup = False     # mask discovery can take minutes: announce it before it starts
    options: Mapping[str, Option] = {}  # this method's own settings, by config key (see Option)

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

    def mask_scores_attrs(self, cfg) -> dict:
        """What the scores behind the mask are (stored with them when the mask has scores)."""
        return {"what": f"{cfg.method}'s score of each prunable weight"}
