"""Placement changes who trains a client, never what the run computes; bench placement's figures."""

import numpy as np

from ssfl_mpi.results import read

from .launch import launch

SMALL = ["--clients", "9", "--clients-per-round", "5", "--rounds", "3", "--local-epochs", "1", "--threads", "1"]


def test_static_and_balanced_placement_give_the_same_run(tmp_path):
    for method in ("ssfl", "dispfl"):
        out = {}
        for pl in ("static", "balanced"):
            path = tmp_path / f"{method}_{pl}.h5"
            proc = launch(3, "run", "--method", method, *SMALL, "--placement", pl, "--out", str(path))
            assert proc.returncode == 0, proc.stderr
            out[pl] = read(path)
        a, b = out["static"], out["balanced"]
        for key in a["rounds"]:
            if not key.startswith(("time_", "peak_rss")):
                assert np.array_equal(a["rounds"][key], b["rounds"][key], equal_nan=True), (method, key)
        for name in a["model"]:
            assert np.array_equal(a["model"][name], b["model"][name]), (method, name)


def test_bench_placement_reports_the_paper_rounds(tmp_path):
    out = tmp_path / "p.h5"
    proc = launch(1, "bench", "placement", "--ranks", "3,11", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    import h5py

    with h5py.File(out) as f:
        rows = {k: f["bench"][k][()] for k in f["bench"]}
    assert rows["ranks"].tolist() == [3, 11]
    # the paper preset: 100 equal clients, 10 a round: k mod W leaves ranks idle, longest-first does not
    assert rows["static_mean"][0] > 1.15 and rows["static_mean"][1] > 2
    assert rows["balanced_mean"].tolist() == [1.0, 1.0]
