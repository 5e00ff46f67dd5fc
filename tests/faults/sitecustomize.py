"""Fault injection for the tests, from outside the production code.

The tests put this folder on PYTHONPATH (tests/conftest.py), so every Python process they start,
directly, under mpiexec or inside a Slurm job, imports this file at start-up. It does nothing
unless SSFL_MPI_TEST_FAULT is set; then it wraps a few functions of ssfl_mpi to inject the faults
listed there (comma-separated):

    RANK:ROUND           raise an exception on that rank at the start of that round
    kill:RANK:ROUND      SIGKILL that rank at the start of that round
    term:RANK:ROUND      SIGTERM that rank at the start of that round (a graceful stop); also
                         usr1:, int: and stop: for SIGUSR1, SIGINT and SIGSTOP (a rank that
                         stops responding). Round 0 is the setup, before the mask is found;
                         round R+1 is after the last round.
    nan:CLIENT:ROUND     that client's update carries a NaN
    count:RANK:ROUND     that rank sends one value too few
    diskfull:N:0         the first commit of the result file once it holds N rows fails with ENOSPC

The wrapped places are the seams where these things happen in a real run: the round-boundary
stop agreement (`round_plan.stop_agreed`), the end of setup and of the rounds, a worker's packed
replies (`train`) and the result file's commit.
"""

from __future__ import annotations

import errno
import functools
import os
import signal

FAULT_ENV = "SSFL_MPI_TEST_FAULT"
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "usr1": signal.SIGUSR1, "int": signal.SIGINT,
           "stop": signal.SIGSTOP}


def _faults() -> list[list[str]]:
    return [item.split(":") for item in os.environ.get(FAULT_ENV, "").split(",") if item]


def fire(rank: int, r: int) -> None:
    """The round-boundary faults of (rank, round r)."""
    for parts in _faults():
        if parts == [str(rank), str(r)]:
            raise RuntimeError(f"injected fault ({FAULT_ENV}={':'.join(parts)})")
        if parts[1:] == [str(rank), str(r)] and parts[0] in SIGNALS:
            os.kill(os.getpid(), SIGNALS[parts[0]])


def poisoned(kind: str, who: int, r: int) -> bool:
    return [kind, str(who), str(r)] in _faults()


def _after(fn, then):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        result = fn(*args, **kwargs)
        then(*args, result=result, **kwargs)
        return result
    return wrapped


def _install() -> None:
    import numpy as np
    import torch

    from ssfl_mpi import fields, message_rounds, results, round_plan, runtime, server, static_rounds

    stop_agreed = round_plan.stop_agreed

    def stop_agreed_with_faults(s, r):
        fire(s.comm.rank, r)
        return stop_agreed(s, r)

    round_plan.stop_agreed = stop_agreed_with_faults
    runtime.setup = _after(runtime.setup, lambda cfg, comm, result, **_: fire(comm.rank, 0))
    server.ServerBase._loop = _after(server.ServerBase._loop,
                                     lambda self, result: fire(self.s.comm.rank, self.cfg.rounds + 1))
    for module in (static_rounds, message_rounds):
        module.worker_rounds = _after(module.worker_rounds,
                                      lambda s, start, round_, result: fire(s.comm.rank, s.cfg.rounds + 1))

    static_train = static_rounds.StaticWorker.train

    def static_with_faults(self, plan, global_np):
        send, meta = static_train(self, plan, global_np)
        for i, cid in enumerate(meta["client"].astype(int)):
            if poisoned("nan", cid, plan.r):
                send[i * self.mask.payload] = np.nan
        if poisoned("count", self.s.comm.rank, plan.r):
            send = send[:-1]
        return send, meta

    static_rounds.StaticWorker.train = static_with_faults
    message_train = message_rounds.MessageWorker.train

    def message_with_faults(self, plan, received):
        lengths, buf, meta = message_train(self, plan, received)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        parts = [buf[offsets[i]: offsets[i + 1]] for i in range(len(lengths))]
        for i, cid in enumerate(meta["client"].astype(int)):
            if poisoned("nan", cid, plan.r):  # the first values field's first number
                role = {code: name for name, code in fields.ROLES.items()}
                reply = fields.decode(parts[i])
                roles = {e.name: role[e.role] for e in fields.entries(parts[i])}
                first = next(k for k, f in roles.items() if f == "values")
                bad = torch.as_tensor(reply[first]).clone()
                bad.view(-1)[0] = float("nan")
                parts[i] = fields.encode({k: fields.Field(f, bad if k == first else reply[k]) for k, f in roles.items()})
        lengths = np.array([p.size for p in parts], dtype=np.int64)
        buf = np.concatenate(parts) if parts else buf
        if poisoned("count", self.s.comm.rank, plan.r):
            buf = buf[:-1]
        return lengths, buf, meta

    message_rounds.MessageWorker.train = message_with_faults
    commit = results.ResultWriter.commit

    def commit_with_faults(self, *args, **kwargs):
        if not self.failed and "round" in self.f["rounds"] and poisoned("diskfull", self.n_rounds, 0):
            self._fail(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return commit(self, *args, **kwargs)

    results.ResultWriter.commit = commit_with_faults


if os.environ.get(FAULT_ENV):
    _install()
