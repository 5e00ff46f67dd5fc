"""Under mpirun every rank runs pytest: give each rank its own temp root, or their cleanups race."""

import os
import tempfile


def pytest_configure(config):
    if not config.option.basetemp:
        rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
        config.option.basetemp = os.path.join(tempfile.gettempdir(), f"ssfl-mpi-pytest-{os.getppid()}-rank{rank}")
