"""Config validation: each bad input is a UsageError with a message that names it."""

import pytest

from ssfl_mpi.cli import build_parser
from ssfl_mpi.config import Config, load_toml, make_config
from ssfl_mpi.errors import UsageError

BAD = [
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"sparsity": -0.1}, "sparsity must be in"),
    ({"clients": 5, "clients_per_round": 6}, "must not exceed"),
    ({"alpha": 0.0}, "alpha must be > 0"),
    ({"alpha": -1.0}, "alpha must be > 0"),
    ({"method": "nope"}, "unknown value 'nope'"),
    ({"dataset": "imagenet"}, "unknown value 'imagenet'"),
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"lr": float("nan")}, "finite number"),
    ({"dataset": "cifar10", "data_root": "/nonexistent/x"}, "does not exist"),
    ({"mask_distribution": "gaussian"}, "unknown value 'gaussian'"),
    ({"lr_schedule": "step"}, "unknown value 'step'"),
    ({"lr_decay": 0.0}, "lr-decay must be in"),
    ({"lr_decay": 1.5}, "lr-decay must be in"),
    ({"lr_min": 0.2, "lr": 0.1}, "lr-min must be in"),
    ({"readjust_every": 0}, "readjust-every must be >= 1"),
    ({"readjust_ratio": 1.5}, "readjust-ratio must be in"),
    ({"prox_mu": -0.1}, "prox-mu must be >= 0"),
    ({"lr_period": 0}, "lr-period must be >= 1"),
]


@pytest.mark.parametrize("values,message", BAD)
def test_bad_values(values, message):
    with pytest.raises(UsageError, match=message):
        make_config({}, values)


def test_world_checks():
    cfg = Config(clients=4, clients_per_round=2)
    with pytest.raises(UsageError, match="at least 2 MPI ranks"):
        cfg.check_world(1)
    with pytest.raises(UsageError, match="4 worker ranks but only 4 clients|5 worker ranks"):
        cfg.check_world(6)
    cfg.check_world(5)


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('method = "fedavg"\nrounds = 7\nlr = 1\nclients-per-round = 3\n')
    cfg = make_config(load_toml(path), {"rounds": 9})
    assert (cfg.method, cfg.rounds, cfg.lr, cfg.clients_per_round) == ("fedavg", 9, 1.0, 3)


def test_unknown_key_unreadable_and_invalid_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("roundz = 3\n")
    with pytest.raises(UsageError, match="unknown key 'roundz'"):
        load_toml(bad)
    with pytest.raises(UsageError, match="cannot read config file"):
        load_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = = 3\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_toml(broken)
    typed = tmp_path / "typed.toml"
    typed.write_text('rounds = "ten"\n')
    with pytest.raises(UsageError, match="rounds must be an integer"):
        make_config(load_toml(typed), {})


def test_cli_errors_are_usage_errors():
    parser = build_parser()
    with pytest.raises(UsageError, match="invalid choice"):
        parser.parse_args(["run", "--method", "fedsparse"])
    with pytest.raises(UsageError, match="invalid float"):
        parser.parse_args(["run", "--sparsity", "half"])
    args = parser.parse_args(["run", "--sparsity", "0.9"])
    assert vars(args)["sparsity"] == 0.9 and "rounds" not in vars(args)  # unset flags stay unset


def test_default_out_path_and_density():
    cfg = Config()
    assert str(cfg.out_path()) == "results/ssfl_digits_s0.5_seed0.h5"
    assert Config(method="fedavg").out_path().name == "fedavg_digits_s0_seed0.h5"
    assert cfg.density == 0.5
    assert '"sparsity": 0.5' in cfg.to_json()


def test_presets_ship_and_load_in_order_preset_file_flags(tmp_path):
    from ssfl_mpi.presets import list_presets, load_preset

    names = [n for n, _ in list_presets()]
    assert {"paper-cifar10", "paper-cifar100", "digits-compare"} <= set(names)
    assert all(summary for _, summary in list_presets())
    c10 = make_config(load_preset("paper-cifar10"), {"data_root": str(tmp_path)})
    assert (c10.model, c10.clients, c10.clients_per_round, c10.local_epochs, c10.batch_size) == \
        ("resnet18", 100, 10, 5, 16)
    assert (c10.lr_schedule, c10.lr_decay, c10.momentum, c10.sparsity, c10.alpha) == ("exp-round", 0.998, 0.0, 0.5, 0.3)
    c100 = make_config(load_preset("paper-cifar100"), {"data_root": str(tmp_path), "rounds": 2})
    assert (c100.local_epochs, c100.batch_size, c100.momentum, c100.lr_schedule, c100.lr_period, c100.rounds) == \
        (10, 128, 0.9, "cosine-restarts", 10, 2)
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        load_preset("nope")


def test_one_rank_worlds_under_srun_point_at_the_mpi_plugin(monkeypatch):
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(UsageError, match="srun started 4 separate one-rank MPI worlds.*SSFL_SRUN_MPI=pmi2"):
        Config().check_world(1)
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    with pytest.raises(UsageError, match="needs at least 2 MPI ranks"):
        Config().check_world(1)
