"""Placement changes who trains a client, never what the run computes; bench placement's figures."""

import numpy as np
import pytest

from ssfl_mpi.results import read

from .launch import launch

SMALL = ["--clients", "9", "--clients-per-round", "5", "--rounds", "3", "--local-epochs", "1", "--threads", "1"]


CASES = {"static": (3, ["--placement", "static"]), "balanced": (3, []),
         "server-trains-2": (2, ["--server-trains"]), "server-trains-3": (3, ["--server-trains"])}


@pytest.mark.parametrize("method", ["ssfl", "dispfl", "topk"])
def test_placement_and_a_training_server_never_change_the_run(tmp_path, method):
    out = {}
    for case, (n, extra) in CASES.items():
        path = tmp_path / f"{case}.h5"
        proc = launch(n, "run", "--method", method, *SMALL, *extra, "--out", str(path))
        assert proc.returncode == 0, proc.stderr
        out[case] = read(path)
    a = out["static"]
    for case, b in out.items():
        for key in a["rounds"]:
            if not key.startswith(("time_", "peak_rss")):
                assert np.array_equal(a["rounds"][key], b["rounds"][key], equal_nan=True), (case, key)
        for name in a["model"]:
            assert np.array_equal(a["model"][name], b["model"][name]), (case, name)
    assert read(tmp_path / "server-trains-2.h5")["config"]["server_trains"] is True


def test_server_trains_needs_balanced_placement(tmp_path):
    proc = launch(2, "run", "--server-trains", "--placement", "static", "--out", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and "--server-trains needs --placement balanced" in proc.stderr


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
