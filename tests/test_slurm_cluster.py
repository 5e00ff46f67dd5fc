"""The shipped Slurm scripts against a real Slurm (slurm/local-cluster.sh up; SLURM_CONF exported).

Skipped, with the reason shown, where no cluster answers. `.ci/run` brings one up around the tests.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ssfl_mpi.results import read

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--clients", "8", "--clients-per-round", "4", "--local-epochs", "1"]
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


def _cluster_answers() -> str:
    """'' when a cluster answers, else why not."""
    if not shutil.which("sbatch"):
        return "no sbatch on PATH (slurm/local-cluster.sh install && slurm/local-cluster.sh up)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0 or not out.stdout.strip():
        last = (out.stderr.strip().splitlines() or ["no nodes"])[-1]
        return f"no Slurm cluster answers (sinfo: {last}); start one with slurm/local-cluster.sh up"
    return ""


REASON = _cluster_answers()
if REASON:
    pytestmark = [pytest.mark.slurm, pytest.mark.skip(reason=REASON)]


def _sbatch(tmp_path: Path, script: str, *args: str, env: dict | None = None, sbatch: tuple = ()) -> str:
    full_env = {**os.environ, "SSFL_VENV": str(Path(os.sys.executable).parent.parent), "SSFL_HOME": str(ROOT),
                **(env or {})}
    cmd = ["sbatch", "--parsable", "--ntasks=3", "--cpus-per-task=1", "--overcommit", "--time=10",
           f"--output={tmp_path}/job-%j.out", *sbatch, str(ROOT / "slurm" / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _state(job: str) -> tuple[str, int, int]:
    """(state, exit code, restarts) of a job, from scontrol."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    code = int(fields.get("ExitCode", "0:0").split(":")[0])
    return fields.get("JobState", "UNKNOWN"), code, int(fields.get("Restarts", "0"))


def _wait(job: str, timeout: float = 240) -> tuple[str, int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(job)
        if state[0] in FINAL:
            return state
        time.sleep(1)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} did not finish within {timeout} s: {_state(job)}")


def _wait_for_round(tmp_path: Path, job: str, r: int) -> None:
    """Until the job's log shows round r: the run is in its rounds."""
    deadline = time.monotonic() + 120
    log = tmp_path / f"job-{job}.out"
    while time.monotonic() < deadline:
        if log.exists() and f"round    {r}/" in log.read_text():
            return
        time.sleep(0.2)
    pytest.fail(f"job {job} did not reach round {r} within 120 s")


def _log(tmp_path: Path, job: str) -> str:
    return (tmp_path / f"job-{job}.out").read_text()


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_a_run_completes_under_each_launcher(tmp_path, launcher):
    out = tmp_path / "r.h5"
    job = _sbatch(tmp_path, "run.sbatch", *SMALL, "--rounds", "3", "--out", str(out),
                  env={"SSFL_LAUNCHER": launcher})
    state, code, _ = _wait(job)
    assert (state, code) == ("COMPLETED", 0), _log(tmp_path, job)
    r = read(out)
    assert r["attrs"]["status"] == "complete" and r["attrs"]["world_size"] == 3


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_the_warning_stops_the_run_which_requeues_and_finishes_identically(tmp_path, launcher):
    """SIGUSR1 to the batch shell (what --signal=B:USR1@T sends) during the run: the shell forwards it
    to the launcher, the ranks stop, exit 3, requeue, the requeued job resumes the file, COMPLETED,
    and every per-round metric equals an uninterrupted run. With mpirun the ranks are not in an
    srun step of their own: only the forwarding reaches them. No --out: the job names its file."""
    env = {"SSFL_LAUNCHER": launcher}
    job = _sbatch(tmp_path, "run.sbatch", *SMALL, "--rounds", "30", env=env)
    ref = tmp_path / "results" / f"ssfl-mpi_{job}.h5"
    assert _wait(job)[:2] == ("COMPLETED", 0), _log(tmp_path, job)
    job = _sbatch(tmp_path, "run.sbatch", *SMALL, "--rounds", "30", env=env)
    out = tmp_path / "results" / f"ssfl-mpi_{job}.h5"
    _wait_for_round(tmp_path, job, 3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    state, code, restarts = _wait(job, timeout=300)
    text = _log(tmp_path, job)
    assert (state, code) == ("COMPLETED", 0) and restarts >= 1, text
    assert "requeueing job" in text and "resuming it" in text
    a, b = read(ref), read(out)
    assert b["attrs"]["resumed"] >= 1
    for key in a["rounds"]:
        if not key.startswith(("time_", "peak_rss")):
            assert np.array_equal(a["rounds"][key], b["rounds"][key], equal_nan=True), key


def test_scancel_with_term_stops_without_a_requeue_and_leaves_a_resumable_file(tmp_path):
    out = tmp_path / "r.h5"
    job = _sbatch(tmp_path, "run.sbatch", *SMALL, "--rounds", "200", "--out", str(out))
    _wait_for_round(tmp_path, job, 2)
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    state, code, restarts = _wait(job)
    assert (state, code, restarts) == ("FAILED", 3, 0), _log(tmp_path, job)
    assert "not requeued" in _log(tmp_path, job)
    assert read(out)["attrs"]["status"] == "interrupted"


def test_bad_input_fails_the_job_with_the_one_line_error_in_its_log(tmp_path):
    job = _sbatch(tmp_path, "run.sbatch", *SMALL, "--sparsity", "2", "--out", str(tmp_path / "r.h5"))
    state, code, _ = _wait(job)
    text = _log(tmp_path, job)
    assert (state, code) == ("FAILED", 2), text
    assert "ssfl-mpi: error: --sparsity must be in [0, 1)" in text and "Traceback" not in text
    assert not (tmp_path / "r.h5").exists()


def test_a_signal_after_the_run_finished_leaves_the_job_completed(tmp_path):
    """The ranks get SIGUSR1 after their last round (the test-only fault at round R+1)."""
    out = tmp_path / "r.h5"
    job = _sbatch(tmp_path, "run.sbatch", *SMALL, "--rounds", "3", "--out", str(out),
                  env={"SSFL_MPI_TEST_FAULT": "usr1:0:4,usr1:1:4,usr1:2:4"})
    state, code, restarts = _wait(job)
    assert (state, code, restarts) == ("COMPLETED", 0, 0), _log(tmp_path, job)
    assert read(out)["attrs"]["status"] == "complete"



def test_srun_without_the_right_mpi_plugin_says_what_to_set(tmp_path):
    job = _sbatch(tmp_path, "run.sbatch", *SMALL, "--rounds", "1", "--out", str(tmp_path / "r.h5"),
                  env={"SSFL_SRUN_MPI": "none"})
    state, code, _ = _wait(job)
    text = _log(tmp_path, job)
    assert (state, code) == ("FAILED", 2), text
    assert "separate one-rank MPI worlds" in text and "SSFL_SRUN_MPI=pmi2" in text and "Traceback" not in text


def test_plain_scancel_leaves_a_file_that_a_resubmission_finishes(tmp_path):
    out = tmp_path / "r.h5"
    args = (*SMALL, "--rounds", "60", "--out", str(out))
    job = _sbatch(tmp_path, "run.sbatch", *args)
    _wait_for_round(tmp_path, job, 2)
    subprocess.run(["scancel", job], check=True)
    assert _wait(job)[0] == "CANCELLED"
    assert read(out)["attrs"]["status"] != "complete"
    again = _sbatch(tmp_path, "run.sbatch", *args)  # the same submission again
    state, code, _ = _wait(again)
    assert (state, code) == ("COMPLETED", 0) and "resuming it" in _log(tmp_path, again), _log(tmp_path, again)
    r = read(out)
    assert r["attrs"]["status"] == "complete" and r["attrs"]["resumed"] == 1
    assert r["rounds"]["round"].tolist() == list(range(1, 61))


GRID = """
out_dir = "{out}"
name = "cell_seed{{seed}}"
[base]
clients = 8
clients_per_round = 4
rounds = 3
local_epochs = 1
[axes]
seed = [0, 1]
"""


def test_a_sweep_array_completes_and_a_resubmission_does_no_work(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.format(out=tmp_path / "cells"))
    job = _sbatch(tmp_path, "sweep.sbatch", str(grid), sbatch=("--array=0-1",))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        states = [_state(f"{job}_{i}")[0] for i in (0, 1)]
        if all(s in FINAL for s in states):
            break
        time.sleep(1)
    assert states == ["COMPLETED", "COMPLETED"], states
    assert all(read(tmp_path / "cells" / f"cell_seed{s}.h5")["attrs"]["status"] == "complete" for s in (0, 1))
    whole = _sbatch(tmp_path, "sweep.sbatch", str(grid))  # the whole grid in one job: nothing left to do
    assert _wait(whole)[:2] == ("COMPLETED", 0)
    assert "sweep: 0 run, 0 resumed, 2 already complete" in _log(tmp_path, whole)


def test_scaling_sbatch_completes(tmp_path):
    job = _sbatch(tmp_path, "scaling.sbatch", "--out", str(tmp_path / "scaling.h5"), "--rounds", "3",
                  "--local-epochs", "1")
    state, code, _ = _wait(job)
    assert (state, code) == ("COMPLETED", 0), _log(tmp_path, job)
    assert (tmp_path / "scaling.h5").exists()
