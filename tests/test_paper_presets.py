"""The paper presets end to end on generated CIFAR files, and SSFL's exact saliency sum at 5,000 clients.

Every run here goes through the user's data path: torchvision's readers on files in its layouts
(tests/datagen.py); only the CIFAR checksum, which generated files cannot match, is switched off.
"""

import numpy as np
import pytest
import torch

from ssfl_mpi import data, models
from ssfl_mpi.partition import label_counts, partition, proportional_test_split
from ssfl_mpi.results import read
from ssfl_mpi.seeding import np_rng, torch_gen, torch_seed
from ssfl_mpi.sparse import FlatModel
from ssfl_mpi.training import predict, split_accuracy

from .datagen import write
from .launch import launch

ENV = {data.UNVERIFIED_ENV: "1"}
TINY = ["--rounds", "2", "--local-epochs", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def preset_runs(tmp_path_factory):
    out = {}
    for preset, name in (("paper-cifar10", "cifar10"), ("paper-cifar100", "cifar100")):
        root = tmp_path_factory.mktemp(name)
        write(name, root, n_train=400, n_test=200, seed=1)
        path = root / "run.h5"
        proc = launch(3, "run", "--preset", preset, "--data-root", str(root), *TINY, "--out", str(path),
                      env=ENV, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        out[preset] = (root, path, proc.stdout)
    return out


@pytest.mark.parametrize("preset", ["paper-cifar10", "paper-cifar100"])
def test_paper_preset_runs_end_to_end_with_both_accuracies(preset_runs, preset):
    root, path, stdout = preset_runs[preset]
    r = read(path)
    a, rounds = r["attrs"], r["rounds"]
    assert a["status"] == "complete" and a["world_size"] == 3 and a["model"] == "resnet18"
    assert a["n_clients"] == 100 and a["clients_per_round"] == 10
    assert rounds["round"].tolist() == [1, 2]
    # evaluated every round, as the reference (frequency_of_the_test: 1)
    for key in ("test_accuracy", "client_accuracy", "personal_accuracy", "test_loss"):
        assert np.isfinite(rounds[key]).all(), key
    assert rounds["client_accuracy"][1] == rounds["personal_accuracy"][1]  # one shared mask
    cfg = r["config"]
    assert (cfg["saliency_score"], cfg["saliency_input"], cfg["topk_ties"], cfg["augment_padding"],
            cfg["eval_every"], cfg["saliency_weighting"]) == ("mean-abs", "augmented", "keep-all", "black", 1,
                                                              "uniform")
    kept = r["mask"]["flat"]
    assert kept.sum() >= int(0.5 * a["n_prunable"]) and a["density"] == kept.sum() / kept.size
    scores = r["saliency"]["global"]
    assert scores.shape == (a["n_prunable"],) and scores.dtype == np.float32
    assert scores[kept].min() >= scores[~kept].max()  # the mask is the top of the stored score
    for phase in ("setup: load", "setup: partition", "setup: build resnet18", "setup: ssfl mask"):
        assert phase in stdout, phase


def test_recorded_accuracies_are_the_final_model_evaluated_independently(preset_runs, monkeypatch):
    """Rebuild the test set, the clients' test splits and the final model; recompute both numbers."""
    root, path, _ = preset_runs["paper-cifar10"]
    r = read(path)
    cfg = r["config"]
    monkeypatch.setenv(data.UNVERIFIED_ENV, "1")
    ds = data.load("cifar10", root=str(root), download=False)
    parts = partition(cfg["partition"], ds.train_labels, n_clients=cfg["clients"],
                      rng=np_rng(cfg["seed"], "partition"), alpha=cfg["alpha"])
    counts = label_counts(ds.train_labels, parts, ds.n_classes)
    assert np.array_equal(counts, r["partition"]["label_counts"])
    x, y = ds.test_set()
    owner = proportional_test_split(y.numpy(), counts, np_rng(cfg["seed"], "personal-split"))
    net = models.build("resnet18", dataset="cifar10", input_shape=ds.input_shape, n_classes=10,
                       seed=torch_seed(cfg["seed"], "init"))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in r["model"].items()})
    correct, _ = predict(FlatModel(net), x, y)
    assert r["rounds"]["test_accuracy"][-1] == pytest.approx(float(correct.double().mean()), abs=1e-12)
    per_client = [float(correct[owner == c].double().mean()) for c in range(cfg["clients"]) if (owner == c).any()]
    assert r["rounds"]["client_accuracy"][-1] == pytest.approx(np.mean(per_client), abs=1e-12)
    assert split_accuracy(correct, owner, cfg["clients"]) == pytest.approx(np.mean(per_client), abs=1e-12)


def test_ssfl_with_5000_clients_same_mask_on_2_and_3_ranks_and_it_is_the_float64_top_k(tmp_path):
    """The old fixed-point sum overflowed int64 past 2,048 clients; the limb sum does not."""
    write("fashionmnist", tmp_path, n_train=5000, n_test=50, seed=2)
    args = ["run", "--dataset", "fashionmnist", "--data-root", str(tmp_path), "--model", "mlp",
            "--clients", "5000", "--clients-per-round", "2", "--rounds", "1", "--local-epochs", "1",
            "--threads", "1"]
    runs = {}
    for n in (2, 3):
        path = tmp_path / f"k5000_{n}.h5"
        proc = launch(n, *args, "--out", str(path), env=ENV, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = read(path)
    assert np.array_equal(runs[2]["mask"]["flat"], runs[3]["mask"]["flat"])
    assert np.array_equal(runs[2]["saliency"]["global"], runs[3]["saliency"]["global"])

    # The clients' scores, recomputed here one by one and summed in float64 in client order.
    ds = data.load("fashionmnist", root=str(tmp_path), download=False)
    parts = partition("dirichlet-balanced", ds.train_labels, n_clients=5000, rng=np_rng(0, "partition"), alpha=0.3)
    flat = FlatModel(models.build("mlp", dataset="fashionmnist", input_shape=ds.input_shape, n_classes=10,
                                  seed=torch_seed(0, "init")))
    from ssfl_mpi.saliency import client_saliency

    total = torch.zeros(flat.n_prunable, dtype=torch.float64)
    for k in range(5000):
        x, y = ds.train_subset(parts[k])
        total += client_saliency(flat, x, y, batch_size=16, n_batches=1, gen=torch_gen(0, "saliency", k)) / 5000
    k = int(np.floor(0.5 * flat.n_prunable))
    expected = np.zeros(flat.n_prunable, dtype=bool)
    expected[np.argsort(-total.numpy(), kind="stable")[:k]] = True
    assert np.array_equal(runs[3]["mask"]["flat"], expected)
    assert np.allclose(runs[3]["saliency"]["global"], total.numpy(), rtol=1e-6, atol=0)


def test_vgg11_a_model_in_one_file_trains_on_cifar_and_resumes(tmp_path):
    """ssfl_mpi/models/vgg.py is the whole of VGG-11: --help, config validation and a run find it."""
    from ssfl_mpi.config import Config
    from ssfl_mpi.models import names

    assert "vgg11" in names() and Config(model="vgg11").model == "vgg11"
    assert "vgg11" in launch(1, "run", "--help").stdout
    net = models.build("vgg11", dataset="cifar10", input_shape=(3, 32, 32), n_classes=10, seed=0)
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    expected = sum(9 * i * o + o + 2 * o for i, o in convs) + 512 * 10 + 10  # conv + bias + GroupNorm, linear
    flat = FlatModel(net)
    assert flat.numel == expected == 9_231_114 and len(flat.prunable) == 9
    write("cifar10", tmp_path, n_train=200, n_test=100, seed=2)
    path = tmp_path / "vgg.h5"
    args = ["run", "--dataset", "cifar10", "--model", "vgg11", "--data-root", str(tmp_path), "--clients", "4",
            "--clients-per-round", "2", "--rounds", "2", "--local-epochs", "1", "--threads", "1", "--out", str(path)]
    proc = launch(3, *args, env={**ENV, "SSFL_MPI_TEST_FAULT": "term:0:2"}, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    proc = launch(3, "run", "--resume", str(path), env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = read(path)
    assert r["attrs"]["model"] == "vgg11" and r["attrs"]["n_params"] == expected
    assert r["rounds"]["round"].tolist() == [1, 2] and np.isfinite(r["rounds"]["test_accuracy"]).all()
