"""Launching `python -m ssfl_mpi` under mpiexec from the tests, with a bound on hangs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

HANG_LIMIT_S = 120


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")


def launch(n: int, *args: str, env: dict | None = None, timeout: float = HANG_LIMIT_S,
           cwd: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MPIEXEC_TIMEOUT": str(int(timeout)), "OMPI_ALLOW_RUN_AS_ROOT": "1",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe", **(env or {})}
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "ssfl_mpi", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, env=full_env, cwd=cwd)
