"""Whole runs under mpiexec: rank-count invariance, bytes, the HDF5 contract, errors and faults."""

import time

import numpy as np
import pytest

from ssfl_mpi.results import ROUND_FIELDS, read

from .launch import launch

SMALL = ["--clients", "8", "--clients-per-round", "4", "--rounds", "3", "--local-epochs", "1",
         "--threads", "1"]
ATTRS = ("schema", "status", "method", "dataset", "model", "partition", "sparsity", "density", "seed",
         "world_size", "n_clients", "clients_per_round", "rounds", "config", "mpi_library", "host",
         "start_time", "end_time", "mask_digest", "version_torch", "version_mpi4py", "version_h5py")


@pytest.fixture(scope="module")
def invariance_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inv")
    out = {}
    for method in ("ssfl", "fedavg"):
        for n in (2, 3, 4) if method == "ssfl" else (3,):
            path = d / f"{method}{n}.h5"
            proc = launch(n, "run", "--method", method, *SMALL, "--out", str(path))
            assert proc.returncode == 0, proc.stderr
            out[method, n] = read(path)
    return out


def test_same_seed_same_run_on_2_3_and_4_ranks(invariance_runs):
    ref = invariance_runs["ssfl", 2]
    for n in (3, 4):
        other = invariance_runs["ssfl", n]
        assert np.array_equal(ref["rounds"]["test_accuracy"], other["rounds"]["test_accuracy"])
        assert np.array_equal(ref["rounds"]["train_loss"], other["rounds"]["train_loss"])
        assert ref["model"].keys() == other["model"].keys()
        for name in ref["model"]:
            assert np.array_equal(ref["model"][name], other["model"][name]), name
        assert np.array_equal(ref["mask"]["flat"], other["mask"]["flat"])
        assert other["attrs"]["world_size"] == n


def test_hdf5_contract(invariance_runs):
    r = invariance_runs["ssfl", 3]
    for key in ATTRS:
        assert key in r["attrs"], key
    assert r["attrs"]["status"] == "complete"
    assert set(r["rounds"]) == set(ROUND_FIELDS)
    assert r["rounds"]["round"].tolist() == [1, 2, 3]
    assert np.all((r["rounds"]["test_accuracy"] >= 0) & (r["rounds"]["test_accuracy"] <= 1))
    assert np.all(r["rounds"]["time_round"] > 0)
    assert r["partition"]["client_sizes"].sum() == 1497
    assert r["partition"]["label_counts"].shape == (8, 10)
    assert r["config"]["clients"] == 8
    assert "mask" not in invariance_runs["fedavg", 3]


def test_ssfl_mask_density_and_zeros_in_the_final_model(invariance_runs):
    r = invariance_runs["ssfl", 3]
    kept = r["mask"]["flat"]
    assert kept.sum() == int(np.floor(0.5 * r["attrs"]["n_prunable"]))
    assert r["attrs"]["density"] == kept.sum() / kept.size
    assert r["mask"]["layers"]["kept"].sum() == kept.sum()
    # /mask/flat runs over the prunable weights in parameter order
    prunable = [name for name in r["mask"]["layers"]["name"]]
    weights = np.concatenate([r["model"][n.decode() if isinstance(n, bytes) else n].ravel() for n in prunable])
    assert np.all(weights[~kept] == 0)
    assert np.count_nonzero(weights[kept]) > 0.99 * kept.sum()


def test_bytes_are_kept_values_plus_dense_rest_times_4_per_client(invariance_runs):
    s, f = invariance_runs["ssfl", 3], invariance_runs["fedavg", 3]
    n_params, n_prunable, n_kept = (s["attrs"][k] for k in ("n_params", "n_prunable", "n_kept"))
    payload = n_kept + (n_params - n_prunable)
    assert s["attrs"]["payload_values"] == payload
    expected = payload * 4 * 4  # 4 clients per round
    assert np.all(s["rounds"]["bytes_up"] == expected) and np.all(s["rounds"]["bytes_down"] == expected)
    assert np.all(f["rounds"]["bytes_up"] == n_params * 4 * 4)
    assert np.allclose(s["rounds"]["bytes_up"] / f["rounds"]["bytes_up"], payload / n_params, rtol=0)


@pytest.mark.parametrize("method", ["ssfl", "fedavg"])
def test_default_digits_setting_reaches_85_percent(method, tmp_path):
    path = tmp_path / "r.h5"
    proc = launch(3, "run", "--method", method, "--rounds", "25", "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("round ") >= 25  # one progress line per round
    acc = read(path)["rounds"]["test_accuracy"]
    assert acc[-1] >= 0.85, acc


def test_single_rank_is_refused(tmp_path):
    proc = launch(1, "run", "--out", str(tmp_path / "r.h5"), timeout=60)
    assert proc.returncode == 2 and "at least 2 MPI ranks" in proc.stderr


def test_existing_result_file_is_not_overwritten(tmp_path):
    out = tmp_path / "r.h5"
    out.write_bytes(b"precious")
    proc = launch(2, "run", "--out", str(out), timeout=60)
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert out.read_bytes() == b"precious"


def test_missing_data_set_under_an_existing_root(tmp_path):
    proc = launch(2, "run", "--dataset", "mnist", "--data-root", str(tmp_path), "--out",
                  str(tmp_path / "r.h5"), timeout=60)
    assert proc.returncode == 2 and "mnist not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("rank", [0, 2])
def test_exception_on_one_rank_ends_the_job_with_its_traceback(rank, tmp_path):
    out = tmp_path / "r.h5"
    t0 = time.monotonic()
    proc = launch(3, "run", *SMALL, "--rounds", "50", "--out", str(out),
                  env={"SSFL_MPI_TEST_FAULT": f"{rank}:2"}, timeout=60)
    assert time.monotonic() - t0 < 180  # a hang guard, not a speed claim (MPIEXEC_TIMEOUT is 60 s)
    assert proc.returncode != 0
    assert proc.stderr.count("Traceback") == 1
    assert f"rank {rank} on" in proc.stderr and "injected fault" in proc.stderr
    if out.exists():
        assert read(out)["attrs"]["status"] != "complete"


def test_bench_comm_writes_every_transport_with_honest_bytes(tmp_path):
    import h5py

    out = tmp_path / "bench.h5"
    proc = launch(3, "bench", "comm", "--params", "20000", "--density", "0.25", "--repeat", "2",
                  "--warmup", "1", "--out", str(out), timeout=60)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        b = {k: f["bench"][k][()] for k in f["bench"]}
        assert f.attrs["world_size"] == 3
    transports = [t.decode() for t in b["transport"]]
    assert transports == ["dense", "pickle", "allreduce", "packed", "bitmap", "bitmap-new", "coo"]
    assert b["samples_s"].shape == (7, 2) and np.all(b["samples_s"] > 0)
    assert np.all(b["median_s"] >= b["min_s"]) and np.all(b["max_s"] >= b["median_s"])
    clients = 2  # one per worker
    assert b["bytes_up"][0] == 20000 * 4 * clients  # dense
    assert b["bytes_up"][2] == 20000 * 40 * clients  # saliency scores as five int64 chunks
    assert b["bytes_up"][3] == 5000 * 4 * clients  # packed values only
    # message header, then a values field and a bitmap field, each with its header and padding to 8
    assert b["bytes_up"][4] == b["bytes_up"][5] == (8 + 40 + 5000 * 4 + 40 + 20000 // 8 + 4) * clients
    assert b["bytes_up"][6] == 5000 * 8 * clients  # int32 index + float32 value
    assert np.allclose(b["mb_per_s"], (b["bytes_up"] + b["bytes_down"]) / b["median_s"] / 1e6)
    assert "packed" in proc.stdout and "vs dense" in proc.stdout


@pytest.mark.parametrize("method", ["fedavg", "ssfl"])
def test_local_accuracy_is_each_clients_last_local_model_on_its_own_split(tmp_path, method, request):
    """The SSFL code's "personal" accuracy, recomputed here client by client from the run's own
    recipe: every client's local training of round 2 from round 1's aggregate (all clients sampled),
    its model on its own test split, unweighted mean; equal to the stored number bit for bit."""
    import copy

    import torch

    from ssfl_mpi import data, models
    from ssfl_mpi.config import make_config
    from ssfl_mpi.partition import label_counts, proportional_test_split, split_for
    from ssfl_mpi.run_setup import local_spec
    from ssfl_mpi.seeding import np_rng, torch_gen, torch_seed
    from ssfl_mpi.sparse import FlatModel, make_mask, unpack
    from ssfl_mpi.training import local_train, predict

    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    torch.set_num_threads(1)  # as the ranks (--threads 1): the same arithmetic
    path = tmp_path / "r.h5"
    options = ["--method", method, "--clients", "4", "--clients-per-round", "4", "--rounds", "2",
               "--local-epochs", "1", "--threads", "1"]
    proc = launch(3, "run", *options, "--eval-every", "2", "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    r = read(path)
    assert np.isnan(r["rounds"]["local_accuracy"][0]) and np.isfinite(r["rounds"]["local_accuracy"][1])
    # round 1's aggregate, from a run of one round
    one = tmp_path / "one.h5"
    assert launch(2, "run", *options[:-6], "--rounds", "1", *options[-4:], "--out", str(one)).returncode == 0
    first = read(one)
    cfg = make_config({"method": method, "clients": 4, "clients_per_round": 4, "rounds": 2, "local_epochs": 1}, {})
    ds = data.load("digits", root="data", download=False)
    parts = split_for(cfg, ds)
    net = models.build("cnn", dataset="digits", input_shape=ds.input_shape, n_classes=10,
                       seed=torch_seed(cfg.seed, "init"))
    flat = FlatModel(net)
    kept = torch.from_numpy(first["mask"]["flat"]) if "mask" in first else torch.ones(flat.n_prunable, dtype=bool)
    mask = make_mask(flat, kept)
    global_flat = torch.cat([torch.from_numpy(first["model"][n]).reshape(-1) for n in flat.names])
    x_test, y_test = ds.test_set()
    owner = proportional_test_split(y_test.numpy(), label_counts(ds.train_labels, parts, ds.n_classes),
                                    np_rng(cfg.seed, "personal-split"))
    accs = []
    for cid in range(4):
        flat.flat.detach().copy_(global_flat)
        x, y = ds.train_subset(parts[cid])
        local_train(flat, x, y, spec=local_spec(cfg, ds), multiplier=mask.multiplier if method == "ssfl" else None,
                    gen=torch_gen(cfg.seed, "shuffle", cid, 2), round_=2)
        trained = copy.deepcopy(flat.flat.detach())
        unpack(trained[mask.send_idx], mask.send_idx, flat.flat)
        idx = np.flatnonzero(owner == cid)
        correct, _ = predict(flat, x_test[idx], y_test[idx])
        accs.append(float(correct.double().mean()))
    assert r["rounds"]["local_accuracy"][1] == np.mean(accs)
    assert r["checkpoint"]["clients"]["local_accuracy"][:, 0].tolist() == accs
