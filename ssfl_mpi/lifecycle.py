"""A run's life outside the algorithm: stop signals, liveness, memory figures. (The tests inject faults
from outside, through tests/faults/sitecustomize.py.)"""

from __future__ import annotations

import os
import resource
import signal

from .errors import UsageError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
    """Set by SIGTERM, SIGUSR1 (Slurm's warning before the time limit) or SIGINT; the ranks agree
    on it at the next round boundary, so every rank stops after the same round.

    One flag for the whole life of the process (`STOP`, installed by the command line before
    anything else): a signal during start-up, the saliency phase, between two cells of a sweep or
    after the result is complete sets the flag and never kills the process. Repeated signals
    change nothing; a run that has completed exits 0 whatever arrived.
    """

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def set(self) -> bool:
        return self.signum != 0


STOP = StopFlag()

# Long computations call alive() (every training step, every scored client, every evaluated batch)
# so that the communication layer can tell the other ranks this one still lives. No MPI here: the
# comm layer registers what alive() does.
_heartbeat = None


def set_heartbeat(fn) -> None:
    global _heartbeat
    _heartbeat = fn


def heartbeat():
    return _heartbeat


def alive() -> None:
    if _heartbeat is not None:
        _heartbeat()


def seconds_since_start() -> float:
    """Wall seconds since this process started (Linux: /proc), NaN where that is not known."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the name
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ALLOCATOR_ENV = "SSFL_MPI_MALLOC"  # "keep" (the default) or "system": leave glibc's malloc settings alone
ALLOCATOR_CHOICES = ("keep", "system")
ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed large blocks for reuse instead of returning them to the kernel.

    torch's CPU tensors above glibc's mmap threshold (at most 32 MiB) are mmap'ed and unmapped on
    every free, so each evaluation batch and each large training activation is page-faulted in
    afresh. Measured on ResNet-18, one thread: evaluating 1,000 images at batch 1000 took 10.4 s
    (3.2 M minor faults, half of it system time) and 5.6 s with this; four training steps of
    batch 128 took 11.0 s and 8.5 s. The price: a rank's resident memory stays at its peak
    instead of shrinking between rounds. Returns whether it took effect (glibc only)."""
    global ALLOCATOR_TUNED
    choice = os.environ.get(ALLOCATOR_ENV, "") or "keep"
    if choice not in ALLOCATOR_CHOICES:
        raise UsageError(f"{ALLOCATOR_ENV}={choice!r}: use keep (the default: freed memory is kept for "
                         f"reuse) or system (glibc's own settings)")
    if choice == "system":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        ALLOCATOR_TUNED = False
    return ALLOCATOR_TUNED
