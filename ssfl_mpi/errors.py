"""Exception types that map to the documented exit codes."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input (options, config file, data, paths): exit 2 with one line, no traceback."""
