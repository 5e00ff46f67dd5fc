"""Shared test fixtures; tests/mpi is collected only under mpirun with 2 or more ranks."""

import os
from pathlib import Path

import pytest

# Every process the tests start (mpiexec ranks, Slurm jobs) imports tests/faults/sitecustomize.py,
# which injects the faults a test asks for in SSFL_MPI_TEST_FAULT and does nothing otherwise.
FAULTS = str(Path(__file__).resolve().parent / "faults")
if FAULTS not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (FAULTS, os.environ.get("PYTHONPATH", "")) if p)


def launched_by_mpirun() -> bool:
    size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    return int(size) >= 2


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.name == "mpi" and collection_path.parent == Path(__file__).parent:
        return not launched_by_mpirun()
    return None


def pytest_collection_modifyitems(config, items):
    """Every test gets its kind: `unit` (serial, in-process), `multirank` (launches mpiexec),
    `mpi` (runs inside an mpiexec-launched pytest) or `slurm` (submits jobs to a real Slurm).
    `pytest -m unit` runs the fast ones alone."""
    from . import launch as launch_module

    for item in items:
        module = getattr(item, "module", None)
        if item.get_closest_marker("slurm"):
            continue  # the module marks itself
        if Path(str(item.fspath)).parent.name == "mpi":
            item.add_marker(pytest.mark.mpi)
        elif module is not None and (getattr(module, "launch", None) is launch_module.launch
                                     or getattr(module, "mpiexec", None) is launch_module.mpiexec):
            item.add_marker(pytest.mark.multirank)  # it starts mpiexec, directly or through a script
        else:
            item.add_marker(pytest.mark.unit)
