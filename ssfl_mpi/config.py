"""The one run configuration: a frozen dataclass, validated once, loaded from TOML and CLI flags."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

LR_SCHEDULES = ("constant", "exp-round", "exp-round-shifted", "cosine-restarts")
PARTITIONS = ("auto", "iid", "dirichlet", "dirichlet-balanced", "pathological", "natural")
AUGMENT_PADDINGS = ("black", "mean")
DEVICES = ("auto", "cpu", "cuda")
PLACEMENTS = ("balanced", "static")  # kept torch-free; a test checks them against placement.py


@dataclass(frozen=True, kw_only=True)
class _Settings:
    """The settings every run has. `Config` adds the methods' own options (methods/*.py) as fields."""

    method: str = "ssfl"
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    model: str = "auto"
    clients: int = 20
    clients_per_round: int = 10
    rounds: int = 100
    local_epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 5e-4
    grad_clip: float = 10.0
    partition: str = "auto"  # natural for data sets with natural clients (LEAF), dirichlet-balanced otherwise
    alpha: float = 0.3
    classes_per_client: int = 2
    sparsity: float = 0.5
    augment_padding: str = "black"  # crop padding: raw image padded black (reference), or "mean"
    prox_mu: float = 0.0  # FedProx proximal term (0: off)
    lr_schedule: str = "constant"
    lr_decay: float = 0.998  # exp-round: lr * decay^(round-1)
    lr_period: int = 10  # cosine-restarts: local epochs per cosine cycle (T_0)
    lr_min: float = 1e-5  # cosine-restarts: floor of the cycle
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    seed: int = 0
    eval_every: int = 1
    checkpoint_every: int = 1  # rounds between checkpoints in the result file (and the last round)
    on_nonfinite: str = "stop"  # a client update with NaN/Inf: stop the run, or skip that client
    liveness_timeout: float = 300.0  # seconds without a sign of life before a rank is declared gone (0: never)
    placement: str = "balanced"  # which rank trains which of a round's clients (results do not change)
    server_trains: bool = False  # rank 0 trains clients too (balanced placement), so -n C uses C cores
    batch_clients: int = 1  # static masks: clients of equal size trained side by side (vmap), up to N
    threads: int = 0  # 0: cores of this node divided by ranks on it
    device: str = "auto"
    out: str = ""  # empty: results/<method>_<dataset>_s<sparsity>_seed<seed>.h5
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check_choice("method", self.method, method_names())
        _check_choice("dataset", self.dataset, dataset_names())
        _check_choice("model", self.model, model_names())
        _check_choice("partition", self.partition, PARTITIONS)
        _check_choice("augment-padding", self.augment_padding, AUGMENT_PADDINGS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("on-nonfinite", self.on_nonfinite, ("stop", "skip"))
        _check_choice("placement", self.placement, PLACEMENTS)
        for name in ("clients", "clients_per_round", "rounds", "local_epochs", "batch_size",
                     "eval_every", "classes_per_client", "checkpoint_every", "lr_period", "batch_clients"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("threads", self.threads, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.clients_per_round > self.clients:
            raise UsageError(f"--clients-per-round ({self.clients_per_round}) must not exceed "
                             f"--clients ({self.clients})")
        _check_real("sparsity", self.sparsity)
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"--sparsity must be in [0, 1) (fraction of prunable weights removed), "
                             f"got {self.sparsity}")
        for name in ("alpha", "lr", "synthetic_alpha", "synthetic_beta"):
            _check_real(name, getattr(self, name))
        if self.alpha <= 0:
            raise UsageError(f"--alpha must be > 0 (Dirichlet concentration), got {self.alpha}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        for name in ("lr_decay", "lr_min"):
            _check_real(name, getattr(self, name))
        if not 0 < self.lr_decay <= 1:
            raise UsageError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.lr_min < self.lr:
            raise UsageError(f"--lr-min must be in [0, --lr), got {self.lr_min}")
        for name in ("momentum", "weight_decay", "grad_clip", "prox_mu", "liveness_timeout"):
            value = getattr(self, name)
            _check_real(name, value)
            if value < 0:
                raise UsageError(f"--{_flag(name)} must be >= 0, got {value}")
        if self.momentum >= 1:
            raise UsageError(f"--momentum must be < 1, got {self.momentum}")
        if self.synthetic_alpha < 0 or self.synthetic_beta < 0:
            raise UsageError("--synthetic-alpha and --synthetic-beta must be >= 0")
        if not isinstance(self.server_trains, bool):
            raise UsageError(f"--server-trains must be true or false, got {self.server_trains!r}")
        for name, (opt, _) in method_options().items():
            _check_option(name, opt, getattr(self, name))
        if self.server_trains and self.placement == "static":
            raise UsageError("--server-trains needs --placement balanced (static placement keeps clients on "
                             "ranks 1..W)")
        from .methods import get

        if self.batch_clients > 1 and get(self.method).rounds != "static":
            raise UsageError(f"--batch-clients applies to the static-mask methods "
                             f"({', '.join(n for n in method_names() if get(n).rounds == 'static')}); "
                             f"{self.method} trains one client at a time")
        problem = get(self.method).check_config(self)
        if problem:
            raise UsageError(problem)
        from . import data

        ds = data.spec(self.dataset)
        if self.partition == "natural" and not ds.natural:
            natural = [n for n in data.names() if data.spec(n).natural]
            raise UsageError(f"--partition natural needs a data set with natural clients "
                             f"({', '.join(natural)}), not {self.dataset}")
        if self.download and ds.files and ds.fetch is None:
            raise UsageError(f"--download: {self.dataset} is not downloadable here; {ds.obtain}")
        if ds.files and not self.download and not Path(self.data_root).is_dir():
            raise UsageError(f"data root {self.data_root!r} does not exist or is not a folder: {ds.obtain}")

    # Derived values are methods, never written back into the object.
    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    @property
    def partition_scheme(self) -> str:
        if self.partition != "auto":
            return self.partition
        from . import data

        return "natural" if data.spec(self.dataset).natural else "dirichlet-balanced"

    @property
    def sparse(self) -> bool:
        from .methods import get

        return get(self.method).sparse

    def out_path(self) -> Path:
        if self.out:
            return Path(self.out)
        sparsity = self.sparsity if self.sparse else 0.0
        return Path("results") / f"{self.method}_{self.dataset}_s{sparsity:g}_seed{self.seed}.h5"

    def check_world(self, world_size: int) -> None:
        """Checks that need the number of ranks; every rank runs them and agrees."""
        if world_size < 2:
            step_tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")
            if step_tasks.isdigit() and int(step_tasks) > 1:
                raise UsageError(f"srun started {step_tasks} separate one-rank MPI worlds: its MPI plugin "
                                 f"does not match this MPI; set SSFL_SRUN_MPI=pmi2 (the mpich wheel) or "
                                 f"pmix, or launch with SSFL_LAUNCHER=mpirun")
            raise UsageError("ssfl-mpi needs at least 2 MPI ranks (rank 0 is the server, the rest "
                             "host clients): launch with mpirun -n 3 (or more)")
        workers = world_size - 1
        if workers > self.clients:
            raise UsageError(f"{workers} worker ranks but only {self.clients} clients: use at most "
                             f"{self.clients + 1} ranks or more --clients")

    def experiment_diff(self, other: "Config") -> list[str]:
        """Keys that change what a run computes (resume refuses them); paths and resources may differ."""
        return [f.name for f in dataclasses.fields(self) if f.name not in RUNTIME_KEYS
                and getattr(self, f.name) != getattr(other, f.name)]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def method_names() -> tuple[str, ...]:
    """The registry's names (imports the method modules, hence torch, on first use)."""
    from .methods import names

    return names()


def method_options() -> dict:
    """config key -> (Option, declaring methods) of every method's own settings (imports torch)."""
    from .methods import options

    return options()


def dataset_names() -> tuple[str, ...]:
    """The data set registry's names (imports the data set modules)."""
    from .data import names

    return names()


def model_names() -> tuple[str, ...]:
    """"auto" and the model registry's names (imports the model modules, hence torch)."""
    from .models import names

    return ("auto", *names())


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"--{name}: unknown value {value!r} (choose from {', '.join(choices)})")


MAX_INT = 2 ** 53  # far beyond any real setting; keeps every count exact in int64 and float64


def _check_option(name: str, opt, value) -> None:
    """A method's option checked against its declaration, with the same messages as the shared settings."""
    flag = _flag(name)
    if opt.kind == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"--{flag} must be true or false, got {value!r}")
    elif opt.kind == "str":
        _check_choice(flag, value, opt.choices) if opt.choices else None
    elif opt.kind == "int":
        _check_int(name, value, minimum=opt.minimum if opt.minimum is not None else -MAX_INT)
    else:
        _check_real(name, value)
    if opt.kind in ("int", "float") and opt.maximum is not None and not opt.minimum <= value <= opt.maximum:
        raise UsageError(f"--{flag} must be in [{opt.minimum:g}, {opt.maximum:g}], got {value}")
    if opt.kind == "float" and opt.minimum is not None and value < opt.minimum:
        raise UsageError(f"--{flag} must be >= {opt.minimum:g}, got {value}")


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"--{_flag(name)} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"--{_flag(name)} must be >= {minimum}, got {value}")
    if value > MAX_INT:
        raise UsageError(f"--{_flag(name)} must be <= 2^53, got {value}")


def _check_real(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"--{_flag(name)} must be a finite number, got {value!r}")


# Where and how a run executes, not what it computes: a resumed run may change these.
RUNTIME_KEYS = ("data_root", "download", "threads", "device", "out", "overwrite", "checkpoint_every",
                "liveness_timeout", "placement", "server_trains")

def _with_method_options(base: type) -> type:
    fields = [(name, opt.kind, dataclasses.field(default=opt.default))
              for name, (opt, _) in method_options().items()]
    cls = dataclasses.make_dataclass("Config", fields, bases=(base,), frozen=True, kw_only=True,
                                     namespace={"__module__": __name__})
    cls.__doc__ = ("Everything that defines a run: the shared settings and every method's own options. "
                   "Saved whole (as JSON) into every result file.")
    return cls


Config = _with_method_options(_Settings)

FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Config))


def read_toml(path: str | os.PathLike, *, what: str = "config") -> dict:
    """A TOML file as a dict; an unreadable or invalid file is a one-line usage error."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what} file {str(path)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} file {str(path)!r} is not UTF-8 text (byte {exc.start}): TOML files are "
                         f"UTF-8") from None


def load_toml(path: str | os.PathLike) -> dict:
    """Read a config file into a dict of Config fields; unknown keys are errors."""
    raw = read_toml(path)
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise UsageError(f"config file {str(path)!r}: unknown key {key!r}")
        values[name] = value
    return values


def make_config(file_values: dict, cli_values: dict) -> Config:
    """CLI flags override the file, the file overrides defaults."""
    merged = {**file_values, **cli_values}
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    for name, value in merged.items():
        # TOML has no int/float distinction for "1": accept integers where floats are expected.
        if types.get(name) == "float" and isinstance(value, int) and not isinstance(value, bool):
            merged[name] = float(value)
        if types.get(name) == "bool" and not isinstance(value, bool):
            raise UsageError(f"{name!r} must be true or false, got {value!r}")
        if types.get(name) == "str" and not isinstance(value, str):
            raise UsageError(f"{name!r} must be a string, got {value!r}")
    return Config(**merged)
