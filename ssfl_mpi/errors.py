"""Exception types that map to the documented exit codes."""

import contextlib

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3  # SIGTERM/SIGUSR1/SIGINT: stopped at a round boundary, checkpoint written; --resume it
EXIT_WRITE = 4  # the result file could not be written (disk full, I/O error): the last commit is intact


class UsageError(Exception):
    """Bad input (options, config file, data, paths): exit 2 with one line, no traceback.

    `collective` is True when every rank is known to raise it (options and config parse the
    same everywhere; setup errors are agreed). Any other usage error must abort the job, or
    the ranks that did not see it would wait forever in the next collective.
    """

    def __init__(self, message: str, *, collective: bool = False):
        super().__init__(message)
        self.collective = collective


class RunError(Exception):
    """A run that cannot go on for a reason one line explains (a client sent NaN): exit 1, no traceback."""


class RemoteFailure(RunError):
    """The server ended the run for a reason one line explains; every worker repeats that line."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Unresponsive(RunError):
    """A rank gave no sign of life for longer than --liveness-timeout: the job is ended."""


class WriteFailed(Exception):
    """Committing the result file failed (disk full, I/O error); the file on disk is the last commit."""


class Interrupted(Exception):
    """Every rank agreed to stop at a round boundary after SIGTERM or SIGUSR1."""


@contextlib.contextmanager
def same_on_every_rank():
    """Errors in here come from the same argv and files on every rank: no abort is needed."""
    try:
        yield
    except UsageError as exc:
        raise UsageError(str(exc), collective=True) from None
