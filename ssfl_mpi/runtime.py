"""One federated run: setup on every rank, the method's mask (or the checkpoint's), then the loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import comm as mpi
from .config import Config
from .clientstate import check_arrays
from .run_setup import ResumePoint, Setup, find_mask, setup
from .sparse import Mask, make_mask
from .message_rounds import MessageServer, MessageWorker
from .static_rounds import CLIENT_STATE, StaticServer, StaticWorker

# Method.rounds -> (server, worker) of the protocol that runs it
PROTOCOLS = {"static": (StaticServer, StaticWorker), "messages": (MessageServer, MessageWorker)}

__all__ = ["run", "setup", "find_mask", "ResumePoint"]


def resumed_mask(s: Setup, resume: ResumePoint) -> Mask:
    """The checkpoint's mask, from the server to every rank; pruned weights zeroed as at the start.

    The checkpoint's sizes are checked against the model here, collectively, before anything is
    written: a mismatch ends every rank with one line and leaves the file as it was.
    """
    kept = np.zeros(s.flat.n_prunable, dtype=np.uint8)
    error = None
    if s.comm.is_server:
        if resume.kept.size != kept.size:
            error = (f"--resume: {str(resume.path)!r} cannot be resumed: its checkpoint mask covers "
                     f"{resume.kept.size} weights, the model has {kept.size} prunable weights")
        else:
            kept[:] = resume.kept
    s.comm.agree(error)
    s.comm.bcast_(kept)
    mask = make_mask(s.flat, torch.from_numpy(kept.astype(bool)))
    s.flat.flat.detach().mul_(mask.multiplier)
    if s.comm.is_server:
        method = s.method
        expected = s.flat.numel if method.rounds != "static" else mask.payload
        if resume.vector.size != expected:
            error = (f"--resume: {str(resume.path)!r} cannot be resumed: its checkpoint vector holds "
                     f"{resume.vector.size} values, this method and mask need {expected}")
        else:
            spec = method.client_state(s.cfg, s.flat) if method.rounds == "messages" else CLIENT_STATE
            defect = check_arrays(spec, s.cfg.clients, resume.clients or {})
            if defect:
                error = f"--resume: {str(resume.path)!r} cannot be resumed: {defect}"
    s.comm.agree(error)
    return mask


def run(cfg: Config, comm: mpi.Comm, resume: ResumePoint | None = None) -> Path | None:
    """Returns the result path on the server, None on workers."""
    s = setup(cfg, comm, resuming=resume is not None)
    mask = resumed_mask(s, resume) if resume else find_mask(s)
    server, worker = PROTOCOLS[s.method.rounds]
    if comm.is_server:
        return server(s, mask, resume).run()
    worker(s, mask, resume).run()
    return None
