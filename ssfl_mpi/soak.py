"""`bench soak`: a long run on digits, and whether memory and time per round stay flat."""

from __future__ import annotations

import logging

import numpy as np

from .config import Config
from .results import read
from .runtime import run

log = logging.getLogger("ssfl_mpi")


def soak(comm, *, rounds: int, early: int, out: str, overwrite: bool, method: str) -> dict | None:
    """Run `rounds` rounds of the default digits job; compare round `early` with the last one.

    Peak RSS is the process's high-water mark (getrusage), so growth between the two rounds is
    memory that a long run keeps; time per round is the median over the 10 rounds up to each.
    """
    cfg = Config(method=method, rounds=rounds, out=out, overwrite=overwrite)
    path = run(cfg, comm)
    if path is None:
        return None
    r = read(path)["rounds"]
    at = {"early": early - 1, "late": rounds - 1}
    fig = {}
    for name, i in at.items():
        window = r["time_round"][max(0, i - 9): i + 1]
        fig[name] = {"round": int(r["round"][i]), "rss_server_mb": float(r["peak_rss_server_mb"][i]),
                     "rss_workers_mb": float(r["peak_rss_workers_mb"][i]),
                     "time_round_s": float(np.median(window))}
    e, late = fig["early"], fig["late"]
    for who in ("server", "workers"):
        key = f"rss_{who}_mb"
        growth = late[key] / e[key] - 1
        log.info("peak RSS %-7s  round %d: %.1f MiB   round %d: %.1f MiB   growth %+.1f%%", who,
                 e["round"], e[key], late["round"], late[key], 100 * growth)
    log.info("time per round (median of 10)  round %d: %.4f s   round %d: %.4f s", e["round"],
             e["time_round_s"], late["round"], late["time_round_s"])
    return fig
