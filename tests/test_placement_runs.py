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


def test_batches_group_equal_sizes_up_to_n():
    from ssfl_mpi.static_rounds import batches

    sizes = np.array([5, 7, 5, 5, 7, 5, 9])
    assert batches([0, 1, 2, 3, 4, 5, 6], sizes, 1) == [[0], [1], [2], [3], [4], [5], [6]]
    assert batches([0, 1, 2, 3, 4, 5, 6], sizes, 3) == [[0, 2, 3], [5], [1, 4], [6]]


def test_batched_clients_agree_with_one_at_a_time_on_any_number_of_ranks(tmp_path):
    out = {}
    for case, (n, extra) in {"one": (3, []), "batched-3": (3, ["--batch-clients", "8"]),
                             "batched-2": (2, ["--batch-clients", "8", "--server-trains"])}.items():
        path = tmp_path / f"{case}.h5"
        proc = launch(n, "run", *SMALL, "--partition", "iid", *extra, "--out", str(path))
        assert proc.returncode == 0, proc.stderr
        out[case] = read(path)
    a = out["one"]
    kept = a["mask"]["flat"]
    for case in ("batched-3", "batched-2"):
        b = out[case]
        assert b["config"]["batch_clients"] == 8
        assert np.array_equal(a["rounds"]["bytes_up"], b["rounds"]["bytes_up"])
        assert np.allclose(a["rounds"]["train_loss"], b["rounds"]["train_loss"], atol=1e-4)
        for name in a["model"]:
            assert np.allclose(a["model"][name], b["model"][name], atol=1e-4), (case, name)
        assert np.array_equal(b["mask"]["flat"], kept)
        names = [n.decode() if isinstance(n, bytes) else n for n in b["mask"]["layers"]["name"]]
        prunable = np.concatenate([b["model"][n].ravel() for n in names])
        assert prunable.size == kept.size and not prunable[~kept].any()  # pruned weights exactly zero
        assert abs(a["rounds"]["test_accuracy"][-1] - b["rounds"]["test_accuracy"][-1]) <= 0.01


def test_batch_clients_is_refused_for_methods_that_send_messages(tmp_path):
    proc = launch(2, "run", "--method", "dispfl", "--batch-clients", "4", "--out", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and "--batch-clients applies to the static-mask methods" in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("ssfl-mpi: error")]) == 2
