"""The README, CI and Slurm script agree with each other and with the code."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_ci_runs_exactly_the_readme_test_command():
    commands = _readme_commands()
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_cmd


def test_run_sbatch_passes_options_and_threads(tmp_path):
    env = {**os.environ, "SSFL_DRY_RUN": "1", "SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS": "5",
           "SLURM_SUBMIT_DIR": str(ROOT), "SSFL_VENV": str(tmp_path)}
    out = subprocess.run(["bash", str(ROOT / "slurm/run.sbatch"), "--rounds", "3"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "no --out given: writing results/ssfl-mpi_local.h5" in out  # a requeued job must find it
    out = out.splitlines()[-1]
    assert out.startswith("srun --cpus-per-task=8 python -m ssfl_mpi run --threads 8 --rounds 3")
    assert out.endswith("--out results/ssfl-mpi_local.h5 ")
    out = subprocess.run(["bash", str(ROOT / "slurm/run.sbatch")], capture_output=True, text=True, check=True,
                         env={**env, "SSFL_LAUNCHER": "mpirun"}).stdout.splitlines()[-1]
    assert out.startswith("mpirun -n 5 python -m ssfl_mpi run --threads 8")
    bad = subprocess.run(["bash", str(ROOT / "slurm/run.sbatch")], capture_output=True, text=True,
                         env={**env, "SSFL_LAUNCHER": "aprun"})
    assert bad.returncode == 2 and "SSFL_LAUNCHER" in bad.stderr


def test_fault_injection_lives_outside_the_production_code():
    """The tests inject faults through tests/faults/sitecustomize.py; the package never reads the switch."""
    sources = {p: p.read_text() for p in (ROOT / "ssfl_mpi").rglob("*.py")}
    assert not [str(p) for p, text in sources.items() if "SSFL_MPI_TEST_FAULT" in text or "inject_fault" in text]
    assert "SSFL_MPI_TEST_FAULT" in (ROOT / "tests" / "faults" / "sitecustomize.py").read_text()
