"""One federated run: setup on every rank, the method's mask, then the server or worker loop."""

from __future__ import annotations

from pathlib import Path

from . import comm as mpi
from .config import Config
from .dynamic_rounds import DynamicServer, DynamicWorker
from .methods import METHODS
from .protocol import find_mask, setup
from .static_rounds import StaticServer, StaticWorker

__all__ = ["run", "setup", "find_mask"]


def run(cfg: Config, comm: mpi.Comm) -> Path | None:
    """Returns the result path on the server, None on workers."""
    s = setup(cfg, comm)
    mask = find_mask(s)
    dynamic = METHODS[cfg.method].dynamic
    if comm.is_server:
        return (DynamicServer if dynamic else StaticServer)(s, mask).run()
    (DynamicWorker if dynamic else StaticWorker)(s, mask).run()
    return None
