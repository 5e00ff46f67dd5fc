"""Runs that survive: bad input, faults, signals, hard kills and resume, each under a time bound."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from ssfl_mpi.results import read

from .launch import launch, mpiexec

SMALL = ["--clients", "8", "--clients-per-round", "4", "--local-epochs", "1", "--threads", "1"]
ROUNDS = 6


def _same_run(a, b):
    """Every per-round metric except timings and memory, the mask and the final weights, bit for bit."""
    for key in a["rounds"]:
        if key.startswith("time_") or key.startswith("peak_rss"):
            continue
        assert np.array_equal(a["rounds"][key], b["rounds"][key], equal_nan=True), key
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert np.array_equal(a["model"][name], b["model"][name]), name
    if "mask" in a:
        assert np.array_equal(a["mask"]["flat"], b["mask"]["flat"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    proc = launch(3, "run", *SMALL, "--rounds", str(ROUNDS), "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    return read(path)


@pytest.mark.parametrize("fault,rounds_left", [
    ("kill:0:2", 1),   # SIGKILL the server early: round 1 is in the file
    ("kill:2:5", 3),   # SIGKILL a worker late: the server may not have written round 4 yet
    ("term:0:3", 2),   # SIGTERM the server: a graceful stop after round 2
    ("term:1:5", 4),   # SIGTERM a worker: every rank stops after round 4
])
def test_killed_or_stopped_run_resumes_to_the_uninterrupted_result(reference, tmp_path, fault, rounds_left):
    path = tmp_path / "r.h5"
    t0 = time.monotonic()
    proc = launch(3, "run", *SMALL, "--rounds", str(ROUNDS), "--out", str(path),
                  env={"SSFL_MPI_TEST_FAULT": fault}, timeout=60)
    assert time.monotonic() - t0 < 180  # a hang guard, not a speed claim
    partial = read(path)  # opens, after SIGKILL too
    done = partial["rounds"]["round"].tolist()
    if fault.startswith("term"):
        assert proc.returncode == 3, proc.stderr
        assert partial["attrs"]["status"] == "interrupted"
        assert done == list(range(1, rounds_left + 1))
        assert "--resume" in proc.stdout
    else:
        assert proc.returncode != 0
        assert partial["attrs"]["status"] == "running"  # never "complete"
        assert done == list(range(1, len(done) + 1)) and len(done) <= rounds_left
    # a round's row and the state after it are committed together, while the next round trains:
    # a kill loses at most the round in flight and the one aggregated just before it
    with h5py.File(path, "r") as f:
        ckpt = int(f["checkpoint"].attrs["round"])
    assert ckpt == len(done) and ckpt >= rounds_left - 1 - (fault == "kill:2:5")
    proc = launch(3, "run", "--resume", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    resumed = read(path)
    assert resumed["attrs"]["status"] == "complete" and resumed["attrs"]["resumed"] == 1
    _same_run(reference, resumed)


@pytest.mark.parametrize("fault,stopped_after", [
    ("term:1:0", 0),                             # SIGTERM during setup, before the mask exists
    ("usr1:0:0", 0),                             # Slurm's warning signal to the server during setup
    ("int:0:3", 2),                              # SIGINT (Ctrl-C) behaves like SIGTERM: no traceback
    ("usr1:1:3,usr1:1:3,term:2:3,usr1:0:3", 2),  # repeated signals on every rank: one stop
])
def test_every_stop_request_leaves_a_file_that_resumes(reference, tmp_path, fault, stopped_after):
    path = tmp_path / "r.h5"
    proc = launch(3, "run", *SMALL, "--rounds", str(ROUNDS), "--out", str(path),
                  env={"SSFL_MPI_TEST_FAULT": fault}, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    partial = read(path)
    assert partial["attrs"]["status"] == "interrupted"
    assert partial["rounds"]["round"].tolist() == list(range(1, stopped_after + 1))
    assert int(partial["checkpoint"]["vector"].size) > 0
    with h5py.File(path, "r") as f:
        assert f["checkpoint"].attrs["round"] == stopped_after
    proc = launch(3, "run", "--resume", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    _same_run(reference, read(path))


def test_a_signal_after_the_last_round_exits_0_with_a_complete_file(reference, tmp_path):
    path = tmp_path / "r.h5"
    after = ROUNDS + 1
    proc = launch(3, "run", *SMALL, "--rounds", str(ROUNDS), "--out", str(path),
                  env={"SSFL_MPI_TEST_FAULT": f"usr1:0:{after},term:1:{after},usr1:2:{after}"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read(path)["attrs"]["status"] == "complete"
    _same_run(reference, read(path))


def test_sigkill_at_a_random_moment_leaves_a_readable_file_that_resumes(reference, tmp_path):
    """An external kill -9 of one rank, wherever it lands (between or inside file writes)."""
    path = tmp_path / "r.h5"
    env = {**os.environ, "MPIEXEC_TIMEOUT": "60"}
    cmd = [mpiexec(), "-n", "3", sys.executable, "-m", "ssfl_mpi", "run", *SMALL, "--rounds", str(ROUNDS),
           "--out", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # kill once the run is in its rounds: the first progress line
    for line in proc.stdout:
        if line.startswith("round"):
            break
    time.sleep(np.random.default_rng().uniform(0, 0.3))
    server = subprocess.run(["pgrep", "-f", "--", f"--out {path}"], capture_output=True, text=True).stdout.split()
    ranks = [int(p) for p in server if int(p) != proc.pid]
    assert ranks
    try:  # one rank, any of them: mpiexec then ends the others
        os.kill(int(np.random.default_rng().choice(ranks)), signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    partial = read(path)
    if partial["attrs"]["status"] == "complete":  # the kill came after the last commit
        _same_run(reference, partial)
        return
    assert partial["attrs"]["status"] == "running"
    proc = launch(3, "run", "--resume", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    _same_run(reference, read(path))


def test_resume_with_sparse_checkpoints_drops_the_rounds_after_the_checkpoint(reference, tmp_path):
    path = tmp_path / "r.h5"
    proc = launch(3, "run", *SMALL, "--rounds", str(ROUNDS), "--checkpoint-every", "3", "--out", str(path),
                  env={"SSFL_MPI_TEST_FAULT": "kill:0:6"}, timeout=60)
    assert proc.returncode != 0
    partial = read(path)
    assert partial["rounds"]["round"].tolist() == [1, 2, 3, 4]  # row 5 was still being evaluated
    with h5py.File(path, "r") as f:
        assert f["checkpoint"].attrs["round"] == 3  # row 4 is past it: dropped and recomputed
    proc = launch(3, "run", "--resume", str(path), "--checkpoint-every", "3", timeout=60)
    assert proc.returncode == 0, proc.stderr
    _same_run(reference, read(path))


def test_sigterm_to_mpiexec_reaches_the_ranks(tmp_path):
    path = tmp_path / "r.h5"
    cmd = [mpiexec(), "-n", "3", sys.executable, "-m", "ssfl_mpi", "run", *SMALL, "--rounds", "500",
           "--out", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MPIEXEC_TIMEOUT": "90"})
    for line in proc.stdout:
        if line.startswith("round    3"):
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    rc = proc.wait(timeout=60)
    assert time.monotonic() - t0 < 180  # stops at the next round boundary, not after 500 rounds
    assert rc == 3
    r = read(path)
    assert r["attrs"]["status"] == "interrupted" and 3 <= len(r["rounds"]["round"]) < 500
    assert r["checkpoint"]["vector"].size > 0


@pytest.mark.parametrize("method", ["ssfl", "feddst"])
def test_nan_update_stops_the_run_naming_client_and_round(tmp_path, method):
    path = tmp_path / "r.h5"
    t0 = time.monotonic()
    # client 5 is sampled in round 2 (seed 0, 8 clients, 4 per round)
    proc = launch(3, "run", *SMALL, "--method", method, "--rounds", "5", "--out", str(path),
                  env={"SSFL_MPI_TEST_FAULT": "nan:5:2"}, timeout=60)
    assert time.monotonic() - t0 < 180  # a hang guard, not a speed claim
    assert proc.returncode == 1
    assert "round 2: client 5 (rank 2) sent a non-finite update" in proc.stderr
    assert "Traceback" not in proc.stderr
    r = read(path)
    assert r["attrs"]["status"] == "failed" and r["rounds"]["round"].tolist() == [1]
    assert np.isfinite(r["checkpoint"]["vector"]).all()
    # local_accuracy is kept for static-mask methods only (NaN by design for FedDST's messages)
    assert all(np.isfinite(v).all() for k, v in r["rounds"].items()
               if v.dtype.kind == "f" and v.size and not (k == "local_accuracy" and method == "feddst"))
    assert np.isnan(r["rounds"]["local_accuracy"]).all() == (method == "feddst")


def test_nan_update_can_be_skipped(tmp_path):
    path = tmp_path / "r.h5"
    proc = launch(3, "run", *SMALL, "--rounds", "4", "--on-nonfinite", "skip", "--out", str(path),
                  env={"SSFL_MPI_TEST_FAULT": "nan:5:2"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "client 5 (rank 2) sent a non-finite update (NaN or Inf): skipped" in proc.stdout
    r = read(path)
    assert r["rounds"]["clients_skipped"].tolist() == [0, 1, 0, 0]
    assert all(np.isfinite(v).all() for v in r["model"].values())


@pytest.mark.parametrize("method", ["ssfl", "random-clientwise"])
def test_a_wrong_count_is_an_error_never_a_misread(tmp_path, method):
    proc = launch(3, "run", *SMALL, "--method", method, "--rounds", "4", "--out", str(tmp_path / "r.h5"),
                  env={"SSFL_MPI_TEST_FAULT": "count:1:2"}, timeout=60)
    assert proc.returncode == 1
    assert "the round protocol expects" in proc.stderr and proc.stderr.count("Traceback") == 1


def test_peak_memory_is_recorded_per_round(reference):
    rss_s, rss_w = reference["rounds"]["peak_rss_server_mb"], reference["rounds"]["peak_rss_workers_mb"]
    assert np.all(rss_s > 50) and np.all(rss_w > 50)
    assert np.all(np.diff(rss_s) >= 0)  # a peak never falls


def test_no_unsafe_loading_in_the_package():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ssfl_mpi"
    import re

    text = "\n".join(p.read_text() for p in root.rglob("*.py"))
    for pattern in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"torch\.load\(", r"np\.load\(",
                    r"(?<![.\w])eval\(", r"(?<![.\w])exec\("):
        assert not re.search(pattern, text), pattern


def _files(tmp_path):
    """Inputs that need a file behind them."""
    complete = tmp_path / "complete.h5"
    assert launch(2, "run", *SMALL, "--rounds", "1", "--out", str(complete)).returncode == 0
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(complete.read_bytes()[:2000])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    unknown_key = tmp_path / "unknown.toml"
    unknown_key.write_text("lr = 0.1\nlearning_rate = 0.2\n")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("lr = [\n")
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text('lr = "fast"\n')
    stopped = tmp_path / "stopped.h5"
    proc = launch(3, "run", *SMALL, "--rounds", "3", "--out", str(stopped), env={"SSFL_MPI_TEST_FAULT": "term:0:2"})
    assert proc.returncode == 3, proc.stderr
    damaged = {}

    def damage(name, change):
        path = tmp_path / f"{name}.h5"
        path.write_bytes(stopped.read_bytes())
        with h5py.File(path, "a") as f:
            change(f)
        damaged[name] = path

    damage("ckpt_round", lambda f: f["checkpoint"].attrs.__setitem__("round", 999))
    damage("ckpt_nan", lambda f: f["checkpoint"]["vector"].__setitem__(0, np.nan))
    damage("ckpt_no_vector", lambda f: f["checkpoint"].__delitem__("vector"))
    damage("ckpt_bad_row", lambda f: f["checkpoint"].attrs.__setitem__("row", "{"))
    damage("config_not_json", lambda f: f.attrs.__setitem__("config", "nope"))
    damage("no_rounds", lambda f: f.__delitem__("rounds"))
    bench_file = tmp_path / "bench.h5"
    with h5py.File(bench_file, "w") as f:
        f.attrs["schema"] = "ssfl-mpi/2"
        f.create_group("bench")
    damaged["bench_file"] = bench_file

    def shorter(name):
        def change(f):
            data = f["checkpoint"][name][()][:-3]
            del f["checkpoint"][name]
            f["checkpoint"].create_dataset(name, data=data)
        return change

    damage("ckpt_short_vector", shorter("vector"))
    damage("ckpt_short_mask", shorter("kept"))
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes("lr = 0.1\n# caf\xe9\n".encode("latin-1"))
    bad_grid = tmp_path / "grid.toml"
    bad_grid.write_text('name = "x{seed"\n[axes]\nseed = [0, 1]\n')
    slash_grid = tmp_path / "slash.toml"
    slash_grid.write_text('name = "../{seed}"\n[axes]\nseed = [0, 1]\n')
    a_file = tmp_path / "plainfile"
    a_file.write_text("x")
    empty_root = tmp_path / "emptyroot"
    empty_root.mkdir()
    return {"complete": complete, "truncated": truncated, "foreign": foreign, "unknown_key": unknown_key,
            "bad_toml": bad_toml, "wrong_type": wrong_type, "a_file": a_file, "empty_root": empty_root,
            "stopped": stopped, "not_utf8": not_utf8, "bad_grid": bad_grid, "slash_grid": slash_grid,
            **damaged}


BAD_INPUTS = [  # (id, argv with {file} placeholders, words of the one-line message)
    ("sparsity-1", ["run", "--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    ("sparsity-negative", ["run", "--sparsity", "-0.5"], "sparsity must be in [0, 1)"),
    ("more-per-round", ["run", "--clients", "4", "--clients-per-round", "5"], "must not exceed"),
    ("alpha-0", ["run", "--alpha", "0"], "alpha must be > 0"),
    ("unknown-method", ["run", "--method", "nope"], "invalid choice"),
    ("not-a-number", ["run", "--lr", "fast"], "invalid float value"),
    ("rounds-0", ["run", "--rounds", "0"], "rounds must be >= 1"),
    ("lr-decay", ["run", "--lr-decay", "2"], "lr-decay must be in (0, 1]"),
    ("checkpoint-every-0", ["run", "--checkpoint-every", "0"], "checkpoint-every must be >= 1"),
    ("unknown-mask-distribution", ["run", "--mask-distribution", "gaussian"], "invalid choice"),
    ("too-few-clients", ["run", "--clients", "1", "--clients-per-round", "1"], "worker ranks but only 1 clients"),
    ("missing-config", ["run", "--config", "/nonexistent/c.toml"], "cannot read config file"),
    ("config-unknown-key", ["run", "--config", "{unknown_key}"], "unknown key 'learning_rate'"),
    ("config-not-toml", ["run", "--config", "{bad_toml}"], "is not valid TOML"),
    ("config-wrong-type", ["run", "--config", "{wrong_type}"], "lr must be a finite number"),
    ("unknown-preset", ["run", "--preset", "nope"], "unknown preset 'nope'"),
    ("no-data-root", ["run", "--dataset", "cifar10", "--data-root", "/nonexistent/data"], "does not exist"),
    ("root-without-data", ["run", "--dataset", "mnist", "--data-root", "{empty_root}"], "mnist not found"),
    ("out-under-a-file", ["run", "--out", "{a_file}/r.h5"], "cannot create directory"),
    ("out-exists", ["run", "--out", "{complete}"], "exists: choose another --out or pass --overwrite"),
    ("resume-missing", ["run", "--resume", "/nonexistent/r.h5"], "no such file"),
    ("resume-truncated", ["run", "--resume", "{truncated}"], "is not a readable HDF5 file"),
    ("resume-foreign", ["run", "--resume", "{foreign}"], "is not an ssfl-mpi result file"),
    ("resume-complete", ["run", "--resume", "{complete}"], "already complete"),
    ("table-foreign", ["table", "{foreign}"], "is not an ssfl-mpi result file"),
    ("config-not-utf8", ["run", "--config", "{not_utf8}"], "is not UTF-8 text"),
    ("huge-integer", ["run", "--rounds", str(10 ** 30)], "rounds must be <= 2^53"),
    ("sweep-bad-name", ["sweep", "{bad_grid}"], "is not a valid format string"),
    ("sweep-name-with-slash", ["sweep", "{slash_grid}"], "without '/'"),
    ("bench-comm-zero-params", ["bench", "comm", "--params", "0"], "--params must be in [1,"),
    ("bench-comm-huge-params", ["bench", "comm", "--params", str(10 ** 12)], "--params must be in [1,"),
    ("bench-comm-density", ["bench", "comm", "--density", "1.5"], "--density must be in (0, 1]"),
    ("bench-comm-exists", ["bench", "comm", "--params", "10", "--out", "{complete}"], "exists: choose another"),
    ("out-is-a-directory", ["run", "--out", "{empty_root}", "--overwrite"], "is a directory: name a file"),
    ("sparsity-keeps-nothing", ["run", "--sparsity", "0.999999"], "keeps 0 of the 52,768 prunable weights"),
    ("table-no-rounds", ["table", "{no_rounds}"], "is a damaged ssfl-mpi result file"),
    ("table-bench-file", ["table", "{bench_file}"], "is a benchmark file"),
    ("report-no-rounds", ["report", "{no_rounds}", "--out", "{a_file}"], "is a damaged ssfl-mpi result file"),
    ("resume-checkpoint-round", ["run", "--resume", "{ckpt_round}"], "checkpoint is of round 999, outside 0..3"),
    ("resume-checkpoint-nan", ["run", "--resume", "{ckpt_nan}"], "vector holds 1 NaN/Inf values"),
    ("resume-checkpoint-no-vector", ["run", "--resume", "{ckpt_no_vector}"], "checkpoint is incomplete"),
    ("resume-checkpoint-bad-row", ["run", "--resume", "{ckpt_bad_row}"], "checkpoint is incomplete"),
    ("resume-config-not-json", ["run", "--resume", "{config_not_json}"], "stored config is not JSON"),
    ("resume-short-vector", ["run", "--resume", "{ckpt_short_vector}"], "this method and mask need"),
    ("resume-short-mask", ["run", "--resume", "{ckpt_short_mask}"], "its checkpoint mask covers"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("argv,message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_ends_every_rank_with_one_line_and_exit_2(argv, message, bad_files, tmp_path):
    argv = [a.format(**bad_files) for a in argv]
    out = tmp_path / "r.h5"
    extra = ["--out", str(out)] if argv[0] == "run" and "--out" not in argv and "--resume" not in argv else []
    before = {p: p.read_bytes() for p in bad_files.values() if p.is_file()}
    t0 = time.monotonic()
    proc = launch(3, *argv, *extra, timeout=30)
    assert time.monotonic() - t0 < 180  # a hang guard only: MPIEXEC_TIMEOUT ends a hang sooner
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 3, proc.stderr  # one line per rank, no traceback
    assert all(ln.startswith("ssfl-mpi: error: ") and message in ln for ln in lines), lines
    assert not out.exists()
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing touched


def test_resume_refuses_other_settings_naming_the_keys(bad_files, tmp_path):
    path = tmp_path / "r.h5"
    proc = launch(3, "run", *SMALL, "--rounds", "4", "--out", str(path), env={"SSFL_MPI_TEST_FAULT": "term:0:3"})
    assert proc.returncode == 3
    before = path.read_bytes()
    proc = launch(3, "run", "--resume", str(path), "--lr", "0.05", "--sparsity", "0.8", timeout=30)
    assert proc.returncode == 2
    line = proc.stderr.splitlines()[0]
    assert "lr (0.1 in the file, 0.05 now)" in line and "sparsity (0.5 in the file, 0.8 now)" in line
    assert path.read_bytes() == before
    # paths, threads and the checkpoint interval may change; repeating the same settings is fine
    proc = launch(3, "run", "--resume", str(path), *SMALL, "--threads", "1", "--checkpoint-every", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read(path)["attrs"]["status"] == "complete"


def test_bench_soak_reports_memory_and_time_early_and_late(tmp_path):
    out = tmp_path / "soak.h5"
    proc = launch(3, "bench", "soak", "--rounds", "12", "--early", "4", "--out", str(out), timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "peak RSS server   round 4:" in proc.stdout and "round 12:" in proc.stdout
    assert "time per round (median of 10)" in proc.stdout
    r = read(out)
    assert r["attrs"]["status"] == "complete" and len(r["rounds"]["round"]) == 12
    bad = launch(3, "bench", "soak", "--rounds", "12", "--early", "12", "--out", str(out), timeout=30)
    assert bad.returncode == 2 and "--early must be in" in bad.stderr


def test_malformed_slurm_cpus_per_task_is_one_line_on_every_rank(tmp_path):
    proc = launch(3, "run", *SMALL[:4], "--rounds", "1", "--out", str(tmp_path / "r.h5"),
                  env={"SLURM_CPUS_PER_TASK": "two"}, timeout=30)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 3 and all("SLURM_CPUS_PER_TASK='two' is not a positive integer" in ln for ln in lines)


def test_one_writer_per_result_file(tmp_path):
    """A second run on the same --out, or a --resume of a file a live run writes, is refused; the live
    run goes on and is then stopped cleanly."""
    path = tmp_path / "r.h5"
    cmd = [mpiexec(), "-n", "3", sys.executable, "-m", "ssfl_mpi", "run", *SMALL, "--rounds", "400",
           "--out", str(path)]
    live = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MPIEXEC_TIMEOUT": "120"})
    try:
        for line in live.stdout:
            if line.startswith("round    2"):
                break
        second = launch(3, "run", *SMALL, "--rounds", "2", "--out", str(path), "--overwrite", timeout=30)
        assert second.returncode == 2 and "is being written by another run (pid" in second.stderr
        resume = launch(3, "run", "--resume", str(path), timeout=30)
        assert resume.returncode == 2 and "is being written by another run" in resume.stderr
        assert live.poll() is None  # untouched by either
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(timeout=60)
    assert live.returncode == 3
    assert read(path)["attrs"]["status"] == "interrupted"


def test_disk_full_ends_the_run_with_exit_4_and_a_resumable_file(reference, tmp_path):
    path = tmp_path / "r.h5"
    proc = launch(3, "run", *SMALL, "--rounds", str(ROUNDS), "--out", str(path),
                  env={"SSFL_MPI_TEST_FAULT": "diskfull:3:0"}, timeout=60)
    assert proc.returncode == 4, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssfl-mpi:")]
    assert len(lines) == 3, proc.stderr  # the server's line, repeated by every worker
    assert all("No space left on device" in ln and "--resume" in ln for ln in lines)
    assert {ln[-8:] for ln in lines} == {"[rank 0]", "[rank 1]", "[rank 2]"}
    assert "Traceback" not in proc.stderr
    # No .tmp; the mask and saliency stay in the companion file the result file links to.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["r.h5", "r.h5.static"]
    partial = read(path)
    assert partial["attrs"]["status"] == "running" and partial["rounds"]["round"].tolist() == [1, 2]
    proc = launch(3, "run", "--resume", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    _same_run(reference, read(path))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["r.h5"]


@pytest.mark.parametrize("stopped", [2, 0])
def test_a_rank_that_stops_responding_ends_the_job_naming_it(reference, tmp_path, stopped):
    """kill -STOP of a worker (or of the server) in round 3: the others notice within the liveness
    timeout, the job ends with one line naming the rank, and the file resumes to the reference."""
    path = tmp_path / "r.h5"
    proc = launch(3, "run", *SMALL, "--rounds", str(ROUNDS), "--out", str(path), "--liveness-timeout", "3",
                  env={"SSFL_MPI_TEST_FAULT": f"stop:{stopped}:3"}, timeout=90)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the liveness check's code, not MPIEXEC_TIMEOUT's
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssfl-mpi:")]
    assert lines and all(f"rank {stopped} on " in ln and "stopped responding" in ln for ln in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    partial = read(path)
    assert partial["attrs"]["status"] in ("running", "failed")
    proc = launch(3, "run", "--resume", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    _same_run(reference, read(path))


def _one_line_each(proc, message, ranks=3):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == ranks and all(ln.startswith("ssfl-mpi: error: ") and message in ln for ln in lines), \
        proc.stderr


def test_an_unknown_allocator_setting_is_one_line_on_every_rank(tmp_path):
    proc = launch(3, "run", *SMALL, "--rounds", "1", "--out", str(tmp_path / "r.h5"),
                  env={"SSFL_MPI_MALLOC": "sytem"}, timeout=30)
    assert proc.returncode == 2
    _one_line_each(proc, "SSFL_MPI_MALLOC='sytem': use keep (the default")
    assert list(tmp_path.iterdir()) == []
    proc = launch(3, "run", *SMALL, "--rounds", "1", "--out", str(tmp_path / "r.h5"),
                  env={"SSFL_MPI_MALLOC": "system"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read(tmp_path / "r.h5")["attrs"]["malloc_keeps_freed"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]  # a finished run leaves no lock file


def test_a_run_refused_after_claiming_its_output_leaves_nothing_behind(tmp_path):
    """The sparsity check comes after rank 0 claimed --out (the model must be built first)."""
    proc = launch(3, "run", *SMALL, "--rounds", "1", "--sparsity", "0.99999", "--out", str(tmp_path / "r.h5"),
                  timeout=30)
    assert proc.returncode == 2
    _one_line_each(proc, "keeps 0 of the")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_before_any_checkpoint_says_what_to_do_instead_of_resume(tmp_path):
    proc = launch(3, "run", *SMALL, "--rounds", "2", "--out", str(tmp_path / "r.h5"),
                  env={"SSFL_MPI_TEST_FAULT": "diskfull:0:0"}, timeout=60)
    assert proc.returncode == 4, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssfl-mpi:")]
    assert len(lines) == 3 and all("no checkpoint was committed yet (nothing to resume): start it again once "
                                   "there is room" in ln and "--resume" not in ln for ln in lines), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("label,message", [(3.5, "a label is 3.5, not a class number"), (None, "list no users")])
def test_bad_leaf_data_is_one_line_on_every_rank_and_stays_untouched(tmp_path, label, message):
    import json

    from .datagen import write_leaf

    root = write_leaf("femnist", tmp_path / "d", writers=3)
    f = next((root / "train").glob("*.json"))
    d = json.loads(f.read_text())
    if label is None:
        for g in (root / "train").glob("*.json"):
            g.write_text(json.dumps({"users": [], "num_samples": [], "user_data": {}}))
    else:
        d["user_data"][d["users"][0]]["y"][0] = label
        f.write_text(json.dumps(d))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    proc = launch(3, "run", "--dataset", "femnist", "--data-root", str(root), "--clients", "3",
                  "--clients-per-round", "2", "--rounds", "1", "--out", str(tmp_path / "r.h5"), timeout=60)
    assert proc.returncode == 2
    _one_line_each(proc, message)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
