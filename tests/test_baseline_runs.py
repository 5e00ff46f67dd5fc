"""DisPFL, SparsyFed and Top-K end to end under mpiexec: same run on 2 and 3 ranks, kill and resume
bit for bit, their own columns, table/report/sweep; a FEMNIST-layout run with one client per writer."""

import numpy as np
import pytest

from ssfl_mpi.results import read

from .datagen import write_leaf
from .launch import launch

SMALL = ["--clients", "8", "--clients-per-round", "4", "--rounds", "4", "--local-epochs", "1",
         "--threads", "1", "--sparsity", "0.8"]
M = 4
VARIANTS = {"dispfl": ["--method", "dispfl", "--readjust-ratio", "0.5"],
            "sparsyfed": ["--method", "sparsyfed"],
            "topk": ["--method", "topk"],
            "topk-ef": ["--method", "topk", "--error-feedback"],
            "lotteryfl": ["--method", "lotteryfl", "--sparsity", "0.5"]}


def same_run(a, b):
    for key in a["rounds"]:
        if key.startswith("time_") or key.startswith("peak_rss"):
            continue
        assert np.array_equal(a["rounds"][key], b["rounds"][key], equal_nan=True), key
    for name in a["model"]:
        assert np.array_equal(a["model"][name], b["model"][name]), name
    assert np.array_equal(a["mask"]["flat"], b["mask"]["flat"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("baselines")
    out = {"dir": d}
    for name, args in VARIANTS.items():
        for n in (2, 3):
            path = d / f"{name}{n}.h5"
            proc = launch(n, "run", *args, *SMALL, "--out", str(path))
            assert proc.returncode == 0, proc.stdout + proc.stderr
            out[name, n] = read(path)
    return out


@pytest.mark.parametrize("name", VARIANTS)
def test_same_run_on_2_and_3_ranks(runs, name):
    a, b = runs[name, 2], runs[name, 3]
    assert a["attrs"]["status"] == b["attrs"]["status"] == "complete"
    same_run(a, b)
    for key in a["checkpoint"].get("clients", {}):
        assert np.array_equal(a["checkpoint"]["clients"][key], b["checkpoint"]["clients"][key]), key


@pytest.mark.parametrize("name", VARIANTS)
def test_kill_and_resume_gives_the_uninterrupted_run(runs, tmp_path, name):
    path = tmp_path / "r.h5"
    proc = launch(3, "run", *VARIANTS[name], *SMALL, "--out", str(path), env={"SSFL_MPI_TEST_FAULT": "kill:2:3"},
                  timeout=60)
    assert proc.returncode != 0
    partial = read(path)
    assert partial["attrs"]["status"] == "running" and len(partial["rounds"]["round"]) <= 2
    proc = launch(3, "run", "--resume", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    resumed = read(path)
    assert resumed["attrs"]["resumed"] == 1 and resumed["attrs"]["status"] == "complete"
    same_run(runs[name, 3], resumed)


def test_dispfl_keeps_personal_models_and_reports_their_accuracy(runs):
    r = runs["dispfl", 3]
    rounds, clients = r["rounds"], r["checkpoint"]["clients"]
    assert clients["mask"].shape == (8, r["attrs"]["n_prunable"]) and clients["weights"].shape == (8, r["attrs"]["n_params"])
    assert clients["shared"].shape == clients["mask"].shape  # the mask each client's weights were trained in
    assert np.isfinite(rounds["personal_accuracy"]).all()
    assert not np.array_equal(rounds["personal_accuracy"], rounds["client_accuracy"])
    # every client's stored weights are zero outside its own mask
    prunable = np.flatnonzero(r["mask"]["flat"] | True)  # the flat mask covers the prunable weights
    assert len(prunable) == r["attrs"]["n_prunable"]
    k = int(np.floor(0.2 * r["attrs"]["n_prunable"] + 1e-9))
    assert (np.abs(clients["mask"].sum(1) - k) <= 8).all()  # ERK per-layer floors: within one per layer
    assert rounds["mask_changes"][:3].min() > 0 and rounds["mask_changes"][-1] == 0  # r_T = 0: no change
    assert (rounds["density_up"] <= 0.2).all() and (rounds["density_up"] > 0.19).all()


def test_sparsyfed_density_and_bytes_are_what_travelled(runs):
    r = runs["sparsyfed", 3]
    rounds, a = r["rounds"], r["attrs"]
    k = int(np.floor(0.2 * a["n_prunable"] + 1e-9))
    assert np.allclose(rounds["density_up"], k / a["n_prunable"])
    assert rounds["density_down"][0] == 1.0  # the dense initial model
    assert (rounds["density_down"][1:] > 0.2).all() and (rounds["density_down"][1:] < 1).all()
    n_dense = a["n_params"] - a["n_prunable"]
    bitmap = (a["n_params"] + 7) // 8
    pad = (-bitmap) % 8
    # up: per client a header, k prunable values plus the (nonzero) rest, and a bitmap of the nonzeros
    values = 4 * (k + n_dense)
    per_client = 8 + 40 + values + (-values) % 8 + 40 + bitmap + pad
    assert rounds["bytes_up"].tolist() == [M * per_client] * 4
    assert rounds["bytes_down"][0] == M * (8 + 40 + 4 * a["n_params"] + (-4 * a["n_params"]) % 8 + 40 + bitmap + pad)
    assert (rounds["bytes_down"][1:] < rounds["bytes_down"][0]).all()


@pytest.mark.parametrize("name", ["topk", "topk-ef"])
def test_topk_bytes_are_k_values_and_a_bitmap_up_the_dense_model_down(runs, name):
    rounds, a = runs[name, 3]["rounds"], runs[name, 3]["attrs"]
    n = a["n_params"]
    k = int(np.floor(0.2 * n + 1e-9))
    bitmap = (n + 7) // 8
    up = 8 + 40 + 4 * k + (-4 * k) % 8 + 40 + bitmap + (-bitmap) % 8
    down = 8 + 40 + 4 * n + (-4 * n) % 8
    assert rounds["bytes_up"].tolist() == [M * up] * 4 and rounds["bytes_down"].tolist() == [M * down] * 4
    assert np.allclose(rounds["density_up"], k / n)
    has_residual = "residual" in runs[name, 3]["checkpoint"].get("clients", {})
    assert has_residual == (name == "topk-ef")
    if has_residual:
        res = runs[name, 3]["checkpoint"]["clients"]["residual"]
        assert np.count_nonzero(np.abs(res).sum(1)) >= M  # the round's clients kept what they did not send


def test_lotteryfl_prunes_personal_masks_down_to_the_floor_only(runs):
    r = runs["lotteryfl", 3]
    masks = r["checkpoint"]["clients"]["mask"]
    floor = int(np.floor(0.5 * r["attrs"]["n_prunable"] + 1e-9))
    assert (masks.sum(1) >= floor).all() and (masks.sum(1) < r["attrs"]["n_prunable"]).any()
    assert np.isfinite(r["rounds"]["personal_accuracy"]).all()


def test_table_and_report_show_the_baselines(runs, tmp_path):
    files = sorted(str(p) for p in runs["dir"].glob("*3.h5"))
    proc = launch(1, "table", *files)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"dispfl (gradient regrowth, sampled)", "sparsyfed (beta=1.25)", "topk (error feedback)",
            "topk (no error feedback)"} <= set(rows)
    assert "density" in rows["sparsyfed (beta=1.25)"] and "up /" in rows["topk (error feedback)"]
    proc = launch(1, "table", "--metric", "personal", *files)
    personal = 100 * runs["dispfl", 3]["rounds"]["personal_accuracy"][-1]
    assert f"| dispfl (gradient regrowth, sampled) | {personal:.1f} " in proc.stdout
    proc = launch(1, "report", *files, "--out", str(tmp_path / "rep"), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "sparsyfed" in (tmp_path / "rep" / "summary.md").read_text()


def test_the_baselines_run_through_sweep(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(f'''out_dir = "{tmp_path / 'out'}"
name = "{{label}}_seed{{seed}}"
[base]
clients = 6
clients_per_round = 3
rounds = 2
local_epochs = 1
threads = 1
[axes]
seed = [0]
[[variants]]
label = "dispfl"
method = "dispfl"
[[variants]]
label = "sparsyfed"
method = "sparsyfed"
[[variants]]
label = "topk-ef"
method = "topk"
error_feedback = true
''')
    proc = launch(3, "sweep", str(grid))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = sorted(p.name for p in (tmp_path / "out").glob("*.h5"))
    assert done == ["dispfl_seed0.h5", "sparsyfed_seed0.h5", "topk-ef_seed0.h5"]
    assert read(tmp_path / "out" / "topk-ef_seed0.h5")["config"]["error_feedback"] is True


def test_femnist_layout_runs_with_one_client_per_writer(tmp_path):
    root = write_leaf("femnist", tmp_path / "femnist", writers=300, per_writer=(4, 9), seed=3)
    path = tmp_path / "f.h5"
    proc = launch(3, "run", "--dataset", "femnist", "--data-root", str(root), "--method", "random",
                  "--clients", "300", "--clients-per-round", "6", "--rounds", "2", "--local-epochs", "1",
                  "--threads", "1", "--out", str(path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = read(path)
    assert r["attrs"]["partition"] == "natural" and r["attrs"]["n_clients"] == 300
    assert r["attrs"]["model"] == "femnist-cnn"
    from ssfl_mpi.data import load

    ds = load("femnist", root=str(root), download=False)
    assert r["partition"]["client_sizes"].tolist() == np.bincount(ds.train_groups).tolist()
    assert np.isfinite(r["rounds"]["test_accuracy"]).all()
    proc = launch(3, "run", "--dataset", "femnist", "--data-root", str(root), "--clients", "301",
                  "--out", str(tmp_path / "g.h5"))
    assert proc.returncode == 2 and "only 300 natural clients" in proc.stderr


@pytest.mark.parametrize("damage", ["missing", "shape", "nan"])
def test_damaged_client_state_refuses_to_resume_and_leaves_the_file(tmp_path, damage):
    import h5py

    path = tmp_path / "r.h5"
    proc = launch(3, "run", *VARIANTS["dispfl"], *SMALL, "--out", str(path), env={"SSFL_MPI_TEST_FAULT": "term:0:3"},
                  timeout=60)
    assert proc.returncode == 3, proc.stderr
    with h5py.File(path, "r+") as f:
        g = f["checkpoint/clients"]
        if damage == "missing":
            del g["weights"]
        elif damage == "shape":
            w = g["weights"][()]
            del g["weights"]
            g.create_dataset("weights", data=w[:-1])
        else:
            w = g["weights"][()]
            w[0, 0] = np.nan
            g["weights"][...] = w
    before = path.read_bytes()
    proc = launch(3, "run", "--resume", str(path), timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 3, proc.stderr
    assert "cannot be resumed" in lines[0] and "client state" in lines[0]
    assert path.read_bytes() == before


def test_shakespeare_layout_runs_the_lstm_with_one_client_per_role(tmp_path):
    root = write_leaf("shakespeare", tmp_path / "shakespeare", writers=12, per_writer=(6, 10), seed=4)
    path = tmp_path / "s.h5"
    proc = launch(3, "run", "--dataset", "shakespeare", "--data-root", str(root), "--method", "ssfl",
                  "--clients", "12", "--clients-per-round", "4", "--rounds", "2", "--local-epochs", "1",
                  "--threads", "1", "--sparsity", "0.8", "--out", str(path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = read(path)
    assert r["attrs"]["model"] == "char-lstm" and r["attrs"]["partition"] == "natural"
    names = [n.decode() if isinstance(n, bytes) else n for n in r["mask"]["layers"]["name"]]
    assert "lstm.weight_hh_l1" in names
    kept = r["mask"]["flat"]
    weights = np.concatenate([r["model"][n].ravel() for n in names])
    assert np.all(weights[~kept] == 0) and kept.mean() == pytest.approx(0.2, abs=1e-4)


def test_batch_clients_refuses_recurrent_models_in_one_line(tmp_path):
    root = write_leaf("shakespeare", tmp_path / "shakespeare", writers=6, per_writer=(6, 10), seed=4)
    proc = launch(2, "run", "--dataset", "shakespeare", "--data-root", str(root), "--clients", "6",
                  "--clients-per-round", "2", "--rounds", "1", "--batch-clients", "2",
                  "--out", str(tmp_path / "s.h5"), timeout=120)
    assert proc.returncode == 2 and "char-lstm has recurrent layers" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "s.h5").exists()
