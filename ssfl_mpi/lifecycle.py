"""A run's life outside the algorithm: stop signals, test-only fault injection, memory figures."""

from __future__ import annotations

import os
import resource
import signal

from .errors import UsageError

FAULT_ENV = "SSFL_MPI_TEST_FAULT"
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


def _faults() -> list[list[str]]:
    """SSFL_MPI_TEST_FAULT: comma-separated faults, each KIND:...; tests only.

    RANK:ROUND           raise an exception on that rank at the start of that round
    kill:RANK:ROUND      SIGKILL that rank at the start of that round
    term:RANK:ROUND      SIGTERM that rank at the start of that round (a graceful stop); also
                         usr1:, int: and stop: for SIGUSR1, SIGINT and SIGSTOP (a rank that
                         stops responding). Round 0 is the setup, before the
                         mask is found; round R+1 is after the last round.
    nan:CLIENT:ROUND     that client's update carries a NaN
    diskfull:N:0         the first commit of the result file once it holds N rows fails with ENOSPC
    count:RANK:ROUND     that rank sends one value too few
    """
    spec = os.environ.get(FAULT_ENV, "")
    return [item.split(":") for item in spec.split(",") if item]


FAULT_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "usr1": signal.SIGUSR1, "int": signal.SIGINT,
                 "stop": signal.SIGSTOP}


def inject_fault(rank: int, r: int) -> None:
    for parts in _faults():
        if parts == [str(rank), str(r)]:
            raise RuntimeError(f"injected fault ({FAULT_ENV}={':'.join(parts)})")
        if parts[1:] == [str(rank), str(r)] and parts[0] in FAULT_SIGNALS:
            os.kill(os.getpid(), FAULT_SIGNALS[parts[0]])


def poisoned(kind: str, who: int, r: int) -> bool:
    """Whether fault `kind` (nan, count) is injected for client/rank `who` in round r."""
    return [kind, str(who), str(r)] in _faults()


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
