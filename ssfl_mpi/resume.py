"""--resume: the settings and checkpoint of an unfinished result file, agreed on every rank."""

from __future__ import annotations

import logging
from pathlib import Path

from .config import Config, make_config
from .errors import UsageError, same_on_every_rank
from .run_setup import ResumePoint
from .results import read_checkpoint


def resume_point(world, path: str, base: dict, options: dict) -> tuple[Config, ResumePoint]:
    """The file's config (flags may change only where and how it runs) and its checkpoint."""
    error, ck = None, None
    if world.is_server:
        try:
            ck = read_checkpoint(path)
            if ck["status"] == "complete":
                raise UsageError(f"--resume: {path!r} is already complete; nothing to resume")
        except UsageError as exc:
            error = str(exc)
    world.agree(error)
    saved_values, round_ = world.bcast_object((ck["config"], ck["round"]) if world.is_server else None)
    with same_on_every_rank():
        try:
            saved = Config(**saved_values)
        except (TypeError, UsageError) as exc:
            raise UsageError(f"--resume: the config stored in {path!r} is not valid here ({exc})") from None
        wanted = make_config({**saved_values, **base}, {**options, "out": path})
        changed = saved.experiment_diff(wanted)
        if changed:
            detail = ", ".join(f"{k} ({getattr(saved, k)!r} in the file, {getattr(wanted, k)!r} now)"
                               for k in changed)
            raise UsageError(f"--resume: {path!r} was run with other settings: {detail}; resume without "
                             f"them or start a new run with --out")
    point = ResumePoint(path=Path(path), round=round_, vector=ck["vector"] if ck else None,
                        kept=ck["kept"] if ck else None, row=ck["row"] if ck else None,
                        clients=ck["clients"] if ck else None, rows=ck["rows"] if ck else 0)
    logging.getLogger("ssfl_mpi").info("resuming %s after round %d", path, round_)
    return wanted, point
