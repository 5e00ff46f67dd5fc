"""slurm/run.sbatch's logic run locally: Slurm's variables set, srun and scontrol stand-ins on PATH."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from ssfl_mpi.results import read

from .launch import mpiexec

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--clients", "8", "--clients-per-round", "4", "--local-epochs", "1", "--rounds", "5"]


def _fake_slurm(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    (bin_dir / "srun").write_text(  # srun's own options, then the command: run it under mpiexec
        f'#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec {mpiexec()} -n "$SLURM_NTASKS" "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {log}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


def test_time_limit_signal_requeues_and_the_requeued_job_resumes(tmp_path):
    bin_dir, log = _fake_slurm(tmp_path)
    out = tmp_path / "job.h5"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "3",
           "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SSFL_VENV": str(Path(sys.executable).parent.parent), "MPIEXEC_TIMEOUT": "90"}
    script = str(ROOT / "slurm" / "run.sbatch")
    # the warning Slurm sends before the limit (--signal=B:USR1): to the batch shell, in round 3
    shell = subprocess.Popen(["bash", script, *SMALL, "--out", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in shell.stdout:
        seen.append(line)
        if line.startswith("round    3"):
            shell.send_signal(signal.SIGUSR1)
            break
    rest, err = shell.communicate(timeout=120)
    text = "".join(seen) + rest
    assert shell.returncode == 0, text + err
    assert "requeueing job 4242" in text
    assert log.read_text().split() == ["requeue", "4242"]
    assert read(out)["attrs"]["status"] == "interrupted"
    second = subprocess.run(["bash", script, *SMALL, "--out", str(out)], capture_output=True, text=True,
                            env={**env, "SLURM_RESTART_COUNT": "1"}, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{out} is 'interrupted': resuming it" in second.stdout
    r = read(out)
    assert r["attrs"]["status"] == "complete" and r["rounds"]["round"].tolist() == [1, 2, 3, 4, 5]
    assert r["attrs"]["resumed"] == 1
    third = subprocess.run(["bash", script, *SMALL, "--out", str(out)], capture_output=True, text=True,
                           env=env, timeout=120)  # a complete file is never resumed or overwritten
    assert third.returncode == 2 and "exists" in third.stderr


def test_a_stop_that_is_not_the_warning_is_not_requeued(tmp_path):
    """SIGTERM to the ranks (scancel --signal=TERM): they stop resumably, exit 3, no requeue."""
    bin_dir, log = _fake_slurm(tmp_path)
    out = tmp_path / "job.h5"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "3",
           "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_ID": "4243", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SSFL_VENV": str(Path(sys.executable).parent.parent), "MPIEXEC_TIMEOUT": "90",
           "SSFL_MPI_TEST_FAULT": "term:0:3"}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "run.sbatch"), *SMALL, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3 and "not requeued" in proc.stdout, proc.stdout + proc.stderr
    assert not log.exists()
    assert read(out)["attrs"]["status"] == "interrupted"


def test_a_missing_environment_is_one_line(tmp_path):
    env = {**os.environ, "SSFL_VENV": str(tmp_path / "nowhere"), "SLURM_SUBMIT_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "run.sbatch"), "--rounds", "1"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot import ssfl_mpi" in lines[0] and "SSFL_VENV" in lines[0]
