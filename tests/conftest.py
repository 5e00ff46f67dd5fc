"""Shared test fixtures; tests/mpi is collected only under mpirun with 2 or more ranks."""

import os
from pathlib import Path

import pytest


def launched_by_mpirun() -> bool:
    size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    return int(size) >= 2


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.name == "mpi" and collection_path.parent == Path(__file__).parent:
        return not launched_by_mpirun()
    return None
