"""The benchmark-suite workflow: sweep a grid inside one launch, report it, bench scaling, Slurm scripts."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssfl_mpi.report import network, projected_comm_s
from ssfl_mpi.results import read
from ssfl_mpi.sweep import load_grid

from .launch import launch, mpiexec

ROOT = Path(__file__).resolve().parent.parent
TINY = """
out_dir = "{out}"
name = "{{label}}_s{{sparsity}}_seed{{seed}}"
[base]
clients = 6
clients_per_round = 3
rounds = 3
local_epochs = 1
threads = 1
[axes]
seed = [0, 1]
sparsity = [0.5, 0.8]
[[variants]]
label = "ssfl"
method = "ssfl"
[[variants]]
label = "fedavg"
method = "fedavg"
name = "fedavg_seed{{seed}}"
axes = {{ sparsity = [0.5] }}
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    grid = d / "grid.toml"
    grid.write_text(TINY.format(out=d / "out"))
    proc = launch(3, "sweep", str(grid), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return grid, d / "out", proc


def test_grid_expands_variants_with_their_own_axes(swept):
    grid, out, _ = swept
    cells = load_grid(str(grid))
    assert [c.name for c in cells] == ["ssfl_s0.5_seed0", "ssfl_s0.8_seed0", "ssfl_s0.5_seed1",
                                       "ssfl_s0.8_seed1", "fedavg_seed0", "fedavg_seed1"]
    assert cells[1].options["sparsity"] == 0.8 and cells[4].options["method"] == "fedavg"
    listing = launch(1, "sweep", str(grid), "--list").stdout.splitlines()
    assert len(listing) == 6 and listing[3].split()[:2] == ["3", "complete"]


def test_sweep_runs_every_cell_in_one_launch_and_a_rerun_does_no_work(swept):
    grid, out, proc = swept
    assert "sweep: 6 run, 0 resumed, 0 already complete" in proc.stdout
    files = sorted(out.glob("*.h5"))
    assert len(files) == 6 and all(read(f)["attrs"]["status"] == "complete" for f in files)
    before = {f: f.stat().st_mtime_ns for f in files}
    again = launch(3, "sweep", str(grid), timeout=60)
    assert again.returncode == 0 and "sweep: 0 run, 0 resumed, 6 already complete" in again.stdout
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_a_sweep_cell_is_the_same_run_as_run_itself(swept, tmp_path):
    grid, out, _ = swept
    direct = tmp_path / "direct.h5"
    proc = launch(3, "run", "--clients", "6", "--clients-per-round", "3", "--rounds", "3", "--local-epochs", "1",
                  "--threads", "1", "--sparsity", "0.8", "--seed", "1", "--out", str(direct))
    assert proc.returncode == 0, proc.stderr
    a, b = read(direct), read(out / "ssfl_s0.8_seed1.h5")
    assert np.array_equal(a["rounds"]["test_accuracy"], b["rounds"]["test_accuracy"])
    assert all(np.array_equal(a["model"][n], b["model"][n]) for n in a["model"])


def test_an_interrupted_sweep_resumes_its_cell_and_runs_the_rest(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(TINY.format(out=tmp_path / "out"))
    proc = launch(3, "sweep", str(grid), env={"SSFL_MPI_TEST_FAULT": "term:1:2"}, timeout=60)
    assert proc.returncode == 3
    first = read(tmp_path / "out" / "ssfl_s0.5_seed0.h5")
    assert first["attrs"]["status"] == "interrupted"
    proc = launch(3, "sweep", str(grid), "--cell", "0", timeout=60)
    assert proc.returncode == 0 and "sweep: 0 run, 1 resumed, 0 already complete" in proc.stdout
    assert read(tmp_path / "out" / "ssfl_s0.5_seed0.h5")["attrs"]["status"] == "complete"
    assert not (tmp_path / "out" / "ssfl_s0.8_seed0.h5").exists()  # --cell ran that cell only


def test_a_signal_between_two_cells_stops_the_sweep_resumably(tmp_path):
    """SIGUSR1 right after cell 0's last round (Slurm's warning between cells): cell 0 stays complete,
    the next cell stops before its round 1 with a round-0 checkpoint, exit 3; the sweep run again
    skips cell 0 and finishes the rest."""
    grid = tmp_path / "grid.toml"
    grid.write_text(TINY.format(out=tmp_path / "out"))
    proc = launch(3, "sweep", str(grid), env={"SSFL_MPI_TEST_FAULT": "usr1:0:4"}, timeout=90)
    assert proc.returncode == 3, proc.stderr
    assert read(tmp_path / "out" / "ssfl_s0.5_seed0.h5")["attrs"]["status"] == "complete"
    second = read(tmp_path / "out" / "ssfl_s0.8_seed0.h5")
    assert second["attrs"]["status"] == "interrupted" and len(second["rounds"]["round"]) == 0
    proc = launch(3, "sweep", str(grid), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1 resumed, 1 already complete" in proc.stdout


FAILING = """
out_dir = "{out}"
name = "r{{rounds}}"
[base]
clients = 8
clients_per_round = 4
local_epochs = 1
threads = 1
[axes]
rounds = [3, 1, 2]
"""


def test_a_failed_cell_is_named_and_the_next_launch_goes_on_after_it(tmp_path):
    """Client 5 sends NaN in round 2 (seed 0): cell 0 (3 rounds) fails, naming itself; the next launch
    skips it, saying how to retry it, and runs the cells after it; --cell 0 retries it."""
    grid = tmp_path / "grid.toml"
    grid.write_text(FAILING.format(out=tmp_path / "out"))
    proc = launch(3, "sweep", str(grid), env={"SSFL_MPI_TEST_FAULT": "nan:5:2"}, timeout=90)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssfl-mpi: error:")]
    assert len(lines) == 3 and all(ln.startswith("ssfl-mpi: error: sweep cell 0 (r3): round 2: client 5")
                                   for ln in lines), proc.stderr
    failed = tmp_path / "out" / "r3.h5"
    assert read(failed)["attrs"]["status"] == "failed"
    before = failed.read_bytes()
    proc = launch(3, "sweep", str(grid), env={"SSFL_MPI_TEST_FAULT": "nan:5:2"}, timeout=90)
    assert proc.returncode == 1 and "sweep cell 2 (r2): round 2: client 5" in proc.stderr  # cell 1 ran
    assert "cell 0 r3: failed in an earlier launch" in proc.stdout and "--cell 0" in proc.stdout
    assert failed.read_bytes() == before
    assert read(tmp_path / "out" / "r1.h5")["attrs"]["status"] == "complete"
    proc = launch(3, "sweep", str(grid), "--cell", "0", timeout=90)  # the fault is gone: it resumes
    assert proc.returncode == 0, proc.stderr
    assert read(failed)["attrs"]["status"] == "complete"


@pytest.mark.parametrize("text,message", [
    ('colour = "red"\n', "unknown keys ['colour']"),
    ('[base]\nlearning_rate = 0.1\n', "unknown run option 'learning_rate'"),
    ('name = "same"\n[axes]\nseed = [0, 1]\n', "two cells are both named 'same'"),
    ('[axes]\nseed = 3\n', "must be a non-empty list"),
    ('[base]\nsparsity = 2.0\n', "sparsity must be in"),
])
def test_bad_grids_stop_every_rank_with_one_line(tmp_path, text, message):
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    proc = launch(3, "sweep", str(grid), timeout=30)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 3 and all(message in ln for ln in lines), proc.stderr


def test_projection_known_answer_and_profiles():
    # 10 clients, 10 MB up and 20 MB down in total: 3 MB per client over 100 Mbit/s, plus 2 x 40 ms
    assert projected_comm_s(10e6, 20e6, 10, 0.040, 100e6) == pytest.approx(0.08 + 3e6 * 8 / 100e6)
    assert network("wan")[1:3] == (0.040, 100e6)
    assert network("site:5:1000")[1:3] == (0.005, 1e9)
    with pytest.raises(Exception, match="NAME:LATENCY_MS:MBIT_PER_S"):
        network("fast")


def test_report_writes_summary_csv_and_plots_and_marks_incomplete_runs(swept, tmp_path):
    _, out, _ = swept
    partial = tmp_path / "partial.h5"
    proc = launch(3, "run", "--clients", "6", "--clients-per-round", "3", "--rounds", "3", "--local-epochs", "1",
                  "--out", str(partial), env={"SSFL_MPI_TEST_FAULT": "term:0:3"})
    assert proc.returncode == 3
    rep = tmp_path / "rep"
    proc = launch(1, "report", *map(str, sorted(out.glob("*.h5"))), str(partial), "--out", str(rep),
                  "--network", "wan", "--network", "edge2:50:20", "--target", "0.3", timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (rep / "summary.md").read_text()
    assert "| fedavg (dense) | 0 | 2 |" in md and "| ssfl | 0.8 | 2 |" in md
    assert "wan comm s/round" in md and "edge2 comm s/round" in md
    assert "Not included" in md and "partial.h5`: status interrupted, 2 rounds" in md
    csv_lines = (rep / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 3 and csv_lines[0].startswith("method,sparsity,seeds,final_acc")
    for png in ("accuracy_vs_round", "accuracy_vs_sparsity", "accuracy_vs_mb", "time_breakdown"):
        assert (rep / f"{png}.png").stat().st_size > 10_000, png
    ssfl = [read(p) for p in sorted(out.glob("ssfl_s0.8_*.h5"))]
    mean = 100 * np.mean([d["rounds"]["test_accuracy"][-1] for d in ssfl])
    assert f"| ssfl | 0.8 | 2 | {mean:.1f} ±" in md


def test_bench_scaling_and_its_report(tmp_path):
    out = tmp_path / "scaling.h5"
    proc = launch(3, "bench", "scaling", "--rounds", "3", "--clients", "6", "--clients-per-round", "4",
                  "--local-epochs", "1", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    import h5py
    with h5py.File(out, "r") as f:
        assert f["bench"]["ranks"][()].tolist() == [2, 3]
        assert f.attrs["kind"] == "scaling"
        assert np.all(f["bench"]["median_round_s"][()] > 0)
    rep = tmp_path / "rep"
    proc = launch(1, "report", str(out), "--out", str(rep))
    assert proc.returncode == 0, proc.stderr
    assert "## scaling:" in (rep / "summary.md").read_text()
    assert (rep / "bench_scaling_0.png").stat().st_size > 10_000


def _fake_slurm(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f'#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec {mpiexec()} -n "$SLURM_NTASKS" "$@"\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$SCONTROL_LOG"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def test_sweep_sbatch_runs_the_array_tasks_cell(swept, tmp_path):
    grid, _, _ = swept
    local = tmp_path / "grid.toml"
    local.write_text(TINY.format(out=tmp_path / "out"))
    env = {**os.environ, "PATH": f"{_fake_slurm(tmp_path)}:{os.environ['PATH']}", "SLURM_NTASKS": "3",
           "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "4",
           "SLURM_SUBMIT_DIR": str(tmp_path), "SSFL_VENV": str(Path(sys.executable).parent.parent),
           "SCONTROL_LOG": str(tmp_path / "scontrol.log"), "MPIEXEC_TIMEOUT": "90"}
    proc = subprocess.run(["bash", str(ROOT / "slurm/sweep.sbatch"), str(local)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name for p in (tmp_path / "out").glob("*.h5")] == ["fedavg_seed0.h5"]  # cell 4
    dry = subprocess.run(["bash", str(ROOT / "slurm/sweep.sbatch"), "g.toml"], capture_output=True, text=True,
                         env={**env, "SSFL_DRY_RUN": "1"}).stdout
    assert dry.startswith("srun --cpus-per-task=1 python -m ssfl_mpi sweep g.toml --cell 4")
    bad = subprocess.run(["bash", str(ROOT / "slurm/sweep.sbatch")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "give a grid" in bad.stderr


def test_scaling_sbatch_doubles_the_workers_up_to_the_allocation(tmp_path):
    env = {**os.environ, "SSFL_DRY_RUN": "1", "SLURM_NTASKS": "9", "SLURM_CPUS_PER_TASK": "2",
           "SLURM_SUBMIT_DIR": str(ROOT), "SSFL_VENV": str(tmp_path)}
    out = subprocess.run(["bash", str(ROOT / "slurm/scaling.sbatch"), "--clients", "64"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert shlex.split(out) == ["srun", "--cpus-per-task=2", "python", "-m", "ssfl_mpi", "bench", "scaling",
                                "--sizes", "2,3,5,9", "--overwrite", "--clients", "64"]
    out = subprocess.run(["bash", str(ROOT / "slurm/scaling.sbatch")], env={**env, "SSFL_SIZES": "2,4",
                         "SSFL_LAUNCHER": "mpirun"}, capture_output=True, text=True, check=True).stdout
    assert shlex.split(out)[:9] == ["mpirun", "-n", "9", "python", "-m", "ssfl_mpi", "bench", "scaling", "--sizes"]
    assert shlex.split(out)[9] == "2,4"


def test_shipped_grids_list_without_data(tmp_path):
    digits = load_grid("digits-compare", validate=False)
    assert len(digits) == 231 and len({c.name for c in digits}) == 231
    cifar = load_grid("paper-cifar10-sparsity", validate=False)
    assert {c.options["model"] for c in cifar} == {"resnet18"} and len(cifar) == 5 + 5 * 5 * 4
