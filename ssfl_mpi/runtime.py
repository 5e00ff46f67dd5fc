"""One federated run: setup on every rank, the method's mask (or the checkpoint's), then the loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import comm as mpi
from .config import Config
from .dynamic_rounds import DynamicServer, DynamicWorker
from .methods import METHODS
from .protocol import ResumePoint, Setup, find_mask, setup
from .sparse import Mask, make_mask
from .static_rounds import StaticServer, StaticWorker

__all__ = ["run", "setup", "find_mask", "ResumePoint"]


def resumed_mask(s: Setup, resume: ResumePoint) -> Mask:
    """The checkpoint's mask, from the server to every rank; pruned weights zeroed as at the start."""
    kept = np.zeros(s.flat.n_prunable, dtype=np.uint8)
    if s.comm.is_server:
        if resume.kept.size != kept.size:
            raise RuntimeError(f"checkpoint mask of {resume.kept.size} weights for a model with "
                               f"{kept.size} prunable weights")
        kept[:] = resume.kept
    s.comm.bcast_(kept)
    mask = make_mask(s.flat, torch.from_numpy(kept.astype(bool)))
    s.flat.flat.detach().mul_(mask.multiplier)
    return mask


def run(cfg: Config, comm: mpi.Comm, resume: ResumePoint | None = None) -> Path | None:
    """Returns the result path on the server, None on workers."""
    s = setup(cfg, comm, resuming=resume is not None)
    s.stop.install()
    try:
        mask = resumed_mask(s, resume) if resume else find_mask(s)
        dynamic = METHODS[cfg.method].dynamic
        if comm.is_server:
            return (DynamicServer if dynamic else StaticServer)(s, mask, resume).run()
        (DynamicWorker if dynamic else StaticWorker)(s, mask, resume).run()
        return None
    finally:
        s.stop.restore()
