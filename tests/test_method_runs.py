"""Every method end to end under mpiexec: valid files, mask invariants, bytes against a hand count."""

import numpy as np
import pytest

from ssfl_mpi.methods import get, names
from ssfl_mpi.results import read

from .launch import launch

SMALL = ["--clients", "8", "--clients-per-round", "4", "--rounds", "4", "--local-epochs", "1",
         "--threads", "1", "--readjust-every", "2", "--sparsity", "0.8"]
M = 4
TOP, FIELD = 8, 40  # message header, field header (ssfl_mpi/fields.py)


def vals(n):
    """A float32 field of n values: header, payload, padding to 8 bytes."""
    return FIELD + 4 * n + (-4 * n) % 8


def bitmap(n):
    return FIELD + (n + 7) // 8 + (-((n + 7) // 8)) % 8
METHODS = names()
# One static and every kind of message method, also run on 2 ranks (compared with 3).
TWO_RANKS = ["feddst", "random-clientwise", "synflow", "random-k"]
STATIC_SPARSE = [m for m in METHODS if get(m).rounds == "static" and get(m).sparse]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    out = {}
    cases = [(m, 3) for m in METHODS] + [(m, 2) for m in TWO_RANKS]
    for method, n in cases:
        path = d / f"{method}{n}.h5"
        proc = launch(n, "run", "--method", method, *SMALL, "--out", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out[method, n] = read(path)
    out["dir"] = d
    return out


def _values(r):
    a = r["attrs"]
    return a["n_kept"] + a["n_params"] - a["n_prunable"], a["n_prunable"], a["n_kept"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_completes_with_a_valid_file(runs, method):
    r = runs[method, 3]
    assert r["attrs"]["status"] == "complete" and r["attrs"]["method"] == method
    assert r["rounds"]["round"].tolist() == [1, 2, 3, 4]
    for key in ("test_accuracy", "personal_accuracy"):
        assert np.all((r["rounds"][key] >= 0) & (r["rounds"][key] <= 1)), key
    if method != "fedavg":
        kept = r["mask"]["flat"]
        assert kept.sum() == r["attrs"]["n_kept"]
        if method == "sparsyfed":  # the global model: the union of the clients' pruned models
            assert r["attrs"]["density"] >= 0.2
        elif not get(method).prunes_model or not get(method).shared_mask:  # a dense global model
            assert r["attrs"]["density"] == 1.0
        else:
            assert r["attrs"]["density"] == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("method", STATIC_SPARSE + ["feddst", "prunefl"])
def test_shared_mask_methods_end_with_pruned_weights_exactly_zero(runs, method):
    r = runs[method, 3]
    kept = r["mask"]["flat"]
    names = [n.decode() if isinstance(n, bytes) else n for n in r["mask"]["layers"]["name"]]
    weights = np.concatenate([r["model"][n].ravel() for n in names])
    assert np.all(weights[~kept] == 0)


@pytest.mark.parametrize("method", STATIC_SPARSE)
def test_static_masks_send_values_only(runs, method):
    r = runs[method, 3]
    payload, _, _ = _values(r)
    assert np.all(r["rounds"]["bytes_up"] == M * 4 * payload)
    assert np.all(r["rounds"]["meta_bytes_up"] == 0) and np.all(r["rounds"]["mask_changes"] == 0)


def test_clientwise_bytes_carry_each_mask_down_and_values_up(runs):
    r = runs["random-clientwise", 3]
    a = r["attrs"]
    n_prunable = a["n_prunable"]
    k = int(np.floor(0.2 * n_prunable + 1e-9))
    values = k + a["n_params"] - n_prunable
    assert 4 * k >= (n_prunable + 7) // 8  # at density 0.2 a bitmap is smaller than int32 indices
    assert np.all(r["rounds"]["bytes_down"] == M * (TOP + vals(values) + bitmap(n_prunable)))
    assert np.all(r["rounds"]["bytes_up"] == M * (TOP + vals(values)))
    assert np.all(r["rounds"]["masks_bitmap"] == M) and np.all(r["rounds"]["masks_indices"] == 0)
    # the global model is the union of the client masks: denser than any one client
    assert a["density"] == 1.0
    assert np.all(r["rounds"]["personal_accuracy"] != r["rounds"]["test_accuracy"])


def test_feddst_changes_its_mask_only_on_readjustment_rounds_at_the_target_density(runs):
    r = runs["feddst", 3]
    payload, n_prunable, k = _values(r)
    rounds = r["rounds"]
    assert rounds["mask_changes"][0] == 0 and rounds["mask_changes"][2] == 0
    assert rounds["mask_changes"][1] > 0  # round 2 readjusts; round 4 too, but its cosine fraction is 0
    assert rounds["mask_changes"][3] == 0
    assert k == int(np.floor(0.2 * n_prunable + 1e-9))
    down = M * (TOP + vals(payload) + bitmap(n_prunable))
    assert np.all(rounds["bytes_down"] == down)
    plain = M * (TOP + vals(payload))
    assert rounds["bytes_up"].tolist() == [plain, down, plain, down]
    overhead = M * (TOP + vals(payload) - 4 * payload)
    assert rounds["meta_bytes_up"].tolist() == [overhead, overhead + M * bitmap(n_prunable)] * 2


def test_random_k_sends_k_values_and_no_positions(runs):
    r = runs["random-k", 3]
    a = r["attrs"]
    k = int(np.floor(0.2 * a["n_params"] + 1e-9))
    assert np.all(r["rounds"]["bytes_up"] == M * (TOP + vals(k)))
    assert np.all(r["rounds"]["meta_bytes_up"] == M * (TOP + vals(k) - 4 * k))  # headers only
    assert np.all(r["rounds"]["bytes_down"] == M * (TOP + vals(a["n_params"])))  # the dense model


def test_synflow_charges_one_bitmap_per_client_at_setup(runs):
    a = runs["synflow", 3]["attrs"]
    assert (a["setup_bytes_up"], a["setup_bytes_down"]) == (0, 8 * ((a["n_prunable"] + 7) // 8))


def test_prunefl_sends_importance_on_reconfiguration_rounds(runs):
    r = runs["prunefl", 3]
    payload, n_prunable, k = _values(r)
    plain = M * (TOP + vals(payload))
    assert r["rounds"]["bytes_up"].tolist() == [plain, plain + M * vals(n_prunable)] * 2
    assert r["attrs"]["setup_bytes_up"] > 0


@pytest.mark.parametrize("method", TWO_RANKS)
def test_methods_give_the_same_run_on_2_and_3_ranks(runs, method):
    a, b = runs[method, 2], runs[method, 3]
    for key in ("test_accuracy", "personal_accuracy", "train_loss", "bytes_up", "bytes_down", "mask_changes"):
        assert np.array_equal(a["rounds"][key], b["rounds"][key]), key
    assert np.array_equal(a["mask"]["flat"], b["mask"]["flat"])
    for name in a["model"]:
        assert np.array_equal(a["model"][name], b["model"][name]), name


def test_options_for_every_method_run_end_to_end(tmp_path):
    path = tmp_path / "prox.h5"
    proc = launch(3, "run", "--method", "magnitude", *SMALL, "--prox-mu", "0.01", "--lr-schedule",
                  "cosine-restarts", "--lr-period", "2", "--grad-clip", "5", "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    cfg = read(path)["config"]
    assert (cfg["prox_mu"], cfg["lr_schedule"], cfg["lr_period"], cfg["grad_clip"]) == (0.01, "cosine-restarts", 2, 5.0)


@pytest.mark.parametrize("make_root,message", [(False, "data root 'data' does not exist"),
                                               (True, "cifar10 not found under 'data'")])
def test_paper_preset_without_cifar_stops_with_one_line_on_every_rank(tmp_path, make_root, message):
    if make_root:
        (tmp_path / "data").mkdir()
    proc = launch(3, "run", "--preset", "paper-cifar10", "--rounds", "2", cwd=str(tmp_path))
    assert proc.returncode == 2
    lines = [line.rsplit(" [rank", 1)[0] for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 3 and len(set(lines)) == 1, proc.stderr
    assert message in lines[0]
    assert not list(tmp_path.glob("results/*.h5"))


def test_presets_subcommand_lists_them():
    proc = launch(1, "presets")
    assert proc.returncode == 0
    assert "paper-cifar10" in proc.stdout and "digits-compare" in proc.stdout
    for name in ("synflow", "random-k", "svhn", "vgg11"):  # each registry's newest entry
        assert f"{name} " in proc.stdout or f"{name}," in proc.stdout or proc.stdout.rstrip().endswith(name), name


def test_table_lists_every_variant_with_mean_spread_and_mb(runs):
    from ssfl_mpi.compare import select
    from ssfl_mpi.table import markdown

    files = sorted(str(p) for p in runs["dir"].glob("*3.h5"))
    sel = select(files)
    text = markdown(sel)
    caption, lines = text.splitlines()[0], text.splitlines()[2:]
    assert "whole test set" in caption
    assert "each client's own test split" in markdown(select(files, "client"), metric="client")
    assert lines[0] == "| method | S = 0.8 |"
    labels = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert labels[0] == "fedavg (dense)" and len(labels) == len(METHODS)
    ssfl = runs["ssfl", 3]
    acc = 100 * ssfl["rounds"]["test_accuracy"][-1]
    mb = np.mean(ssfl["rounds"]["bytes_up"] + ssfl["rounds"]["bytes_down"]) / 1e6
    row = next(line for line in lines if line.startswith("| ssfl |"))
    assert row == f"| ssfl | {acc:.1f} ({mb:.3f} MB) n=1 |"

def test_svhn_runs_sweeps_and_tables_like_any_data_set(tmp_path):
    """A data set added as one module: a run on 3 ranks, a sweep cell and a table row."""
    from tests.datagen import write

    write("svhn", tmp_path / "svhn", n_train=160, n_test=40, seed=3)
    env = {"SSFL_MPI_TEST_UNVERIFIED_DATA": "1"}
    grid = tmp_path / "grid.toml"
    grid.write_text(f'out_dir = "{tmp_path}/cells"\nname = "{{method}}"\n[base]\ndataset = "svhn"\n'
                    f'data_root = "{tmp_path}/svhn"\nmodel = "cnn"\nclients = 4\nclients_per_round = 2\n'
                    f'rounds = 2\nlocal_epochs = 1\nthreads = 1\n[axes]\nmethod = ["ssfl", "synflow"]\n')
    proc = launch(3, "sweep", str(grid), env=env)
    assert proc.returncode == 0, proc.stderr
    for method in ("ssfl", "synflow"):
        r = read(tmp_path / "cells" / f"{method}.h5")
        assert r["config"]["dataset"] == "svhn" and r["attrs"]["status"] == "complete"
        assert r["rounds"]["round"].tolist() == [1, 2]
    table = launch(1, "table", *map(str, sorted((tmp_path / "cells").glob("*.h5"))))
    assert table.returncode == 0 and "| ssfl |" in table.stdout and "| synflow |" in table.stdout, table.stdout
