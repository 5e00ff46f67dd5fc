"""Command line: `ssfl-mpi run|bench ...`, one small function per subcommand."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from .config import (AUGMENT_PADDINGS, DEVICES, LR_SCHEDULES, PLACEMENTS, PARTITIONS, load_toml,
                     dataset_names, make_config, method_names, method_options, model_names)
from .presets import list_presets, load_preset
from .compare import METRICS
from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EXIT_WRITE, Interrupted, RunError,
                     WriteFailed,
                     UsageError, same_on_every_rank)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line and exit 2 on every rank, not a usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


# (flag, type or choices, help). Defaults live in Config only: unset flags do not override the file.
RUN_OPTIONS = [
    ("--method", method_names, "federated method (`ssfl-mpi presets` says one line on each)"),
    ("--dataset", dataset_names, "data set; digits and synthetic ship offline"),
    ("--data-root", str, "folder holding torchvision data sets"),
    ("--model", model_names, "model; auto picks by data set"),
    ("--clients", int, "number of virtual clients K"),
    ("--clients-per-round", int, "clients sampled each round M"),
    ("--rounds", int, "federated rounds R"),
    ("--local-epochs", int, "local epochs E per round"),
    ("--batch-size", int, "local minibatch size B"),
    ("--lr", float, "local learning rate"),
    ("--momentum", float, "local SGD momentum"),
    ("--weight-decay", float, "local weight decay"),
    ("--grad-clip", float, "gradient norm clip per step (0: off)"),
    ("--partition", PARTITIONS, "how training data is split over clients"),
    ("--alpha", float, "Dirichlet concentration (smaller: more label skew)"),
    ("--classes-per-client", int, "classes per client for the pathological partition"),
    ("--sparsity", float, "fraction of prunable weights removed, 0 <= S < 1"),
    ("--augment-padding", AUGMENT_PADDINGS, "CIFAR random crop pads the raw image with black (reference), "
     "or the normalized one with 0 (the mean colour)"),
    ("--prox-mu", float, "FedProx proximal term mu (0: off), any method"),
    ("--lr-schedule", LR_SCHEDULES, "constant; exp-round: lr*decay^round, round 1 first (reference); "
     "exp-round-shifted: lr*decay^(round-1); cosine-restarts: "
     "cosine over local epochs, restarted every --lr-period epochs and every round"),
    ("--lr-decay", float, "exp-round decay per round"),
    ("--lr-period", int, "cosine-restarts period T_0 in local epochs"),
    ("--lr-min", float, "cosine-restarts floor"),
    ("--synthetic-alpha", float, "FedProx Synthetic(alpha, beta): model heterogeneity"),
    ("--synthetic-beta", float, "FedProx Synthetic(alpha, beta): input heterogeneity"),
    ("--seed", int, "seed of every random stream"),
    ("--eval-every", int, "evaluate the global model every N rounds (and the last)"),
    ("--checkpoint-every", int, "write the state to resume from every N rounds (and the last)"),
    ("--on-nonfinite", ("stop", "skip"), "a client update with NaN/Inf: stop the run, or leave it out"),
    ("--liveness-timeout", float, "seconds without a sign of life from a rank before the job is ended "
     "naming it (0: wait forever)"),
    ("--placement", PLACEMENTS, "which worker trains which of a round's clients: longest first onto the least "
     "loaded worker, or client k always on rank 1 + k mod W; the results are the same"),
    ("--batch-clients", int, "static-mask methods: train up to N of a rank's clients with equal sample "
     "counts side by side (torch.func.vmap over their weights; equal to one at a time up to float32 "
     "rounding, not bit for bit); 1: one at a time"),
    ("--threads", int, "torch threads per rank (0: cores on the node / ranks on it)"),
    ("--device", DEVICES, "auto: a GPU per rank round-robin when CUDA is present"),
    ("--out", str, "result file (.h5); default results/<method>_<dataset>_s<S>_seed<seed>.h5"),
]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", metavar="NAME", help="shipped settings (see `ssfl-mpi presets`); "
                   "--config and flags override it")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of options; flags override it")
    p.add_argument("--resume", metavar="FILE.h5", help="continue an interrupted run from its result "
                   "file (its settings are used; flags may change only paths, threads, device)")
    for flag, kind, text in RUN_OPTIONS:
        if kind in (method_names, model_names, dataset_names):  # the registries' names, looked up when a parser is built
            p.add_argument(flag, choices=kind(), default=argparse.SUPPRESS, help=text)
        elif isinstance(kind, tuple):
            p.add_argument(flag, choices=kind, default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text)
    p.add_argument("--download", action="store_true", default=argparse.SUPPRESS,
                   help="let torchvision download the data set (needs network)")
    methods_group = p.add_argument_group("methods' own options (declared by each method; see methods/*.py)")
    for name, (opt, owners) in method_options().items():
        flag, text = "--" + name.replace("_", "-"), f"[{', '.join(owners)}] {opt.help} (default {opt.default})"
        if opt.kind == "bool":
            methods_group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                       help=text)
        elif opt.choices:
            methods_group.add_argument(flag, choices=opt.choices, default=argparse.SUPPRESS, help=text)
        else:
            methods_group.add_argument(flag, type=int if opt.kind == "int" else float if opt.kind == "float" else str,
                                       default=argparse.SUPPRESS, help=text)
    p.add_argument("--server-trains", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="rank 0 trains clients too (balanced placement): -n C uses all C cores; the results "
                        "are the same")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                   help="replace an existing result file")


def _add_bench_settings(p: argparse.ArgumentParser, *, preset: str, out: str) -> None:
    """Where a benchmark that needs no launch takes its run settings from, and where it writes."""
    p.add_argument("--preset", default=preset, help=f"run settings (default {preset})")
    p.add_argument("--config", metavar="FILE.toml", help="run settings from a file instead")
    p.add_argument("--out", default=out)
    p.add_argument("--overwrite", action="store_true")


def _bench_settings(args: argparse.Namespace) -> dict:
    return load_toml(args.config) if args.config else load_preset(args.preset)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssfl-mpi", description="Salient Sparse Federated Learning over MPI. "
                     "Launch with mpirun -n N (rank 0: server, ranks 1..N-1: clients).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="one federated run, results to HDF5")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="run a grid of runs inside this one mpirun")
    sweep.add_argument("grid", metavar="GRID.toml", help="a grid file, or a shipped grid's name "
                       "(digits-compare, paper-cifar10-sparsity)")
    sweep.add_argument("--list", action="store_true", help="print the cells with index and status")
    sweep.add_argument("--cell", type=int, help="run only this cell (e.g. $SLURM_ARRAY_TASK_ID)")
    sweep.set_defaults(func=cmd_sweep)
    rep = sub.add_parser("report", help="summary.md, summary.csv and plots from result (and bench) files")
    rep.add_argument("files", nargs="+", metavar="FILE.h5")
    rep.add_argument("--out", default="results/report", help="folder for summary.md, summary.csv, *.png")
    rep.add_argument("--target", type=float, default=0.9, help="accuracy for 'MB to target' (fraction)")
    rep.add_argument("--network", action="append", default=[], metavar="PROFILE",
                     help="project comm time per round: hpc, lan, wan, edge, or NAME:LATENCY_MS:MBIT "
                          "(repeatable)")
    rep.add_argument("--metric", choices=tuple(METRICS), default="acc",
                     help="acc: global model on the whole test set; client: global model on each client's "
                          "split, mean over clients (the SSFL/DisPFL codes' number); personal: each client's "
                          "own model")
    rep.add_argument("--no-plots", action="store_true")
    rep.set_defaults(func=cmd_report)
    table = sub.add_parser("table", help="comparison table (markdown) of result files")
    table.add_argument("files", nargs="+", metavar="FILE.h5")
    table.add_argument("--metric", choices=tuple(METRICS), default="acc",
                       help="acc: global model on the whole test set; client: global model on each client's "
                            "split, mean over clients (the SSFL/DisPFL codes' number); personal: each "
                            "client's own model")
    table.add_argument("--out", help="also write the table to this file")
    table.set_defaults(func=cmd_table)
    presets = sub.add_parser("presets", help="list the shipped presets and the methods")
    presets.set_defaults(func=cmd_presets)
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    comm = bench_sub.add_parser("comm", help="time one round's model traffic per transport")
    comm.add_argument("--params", type=int, action="append",
                      help="model size in float32 values (repeatable; default: the digits CNN 53,002, "
                           "ResNet-18 11,173,962 and ResNet-50 25,557,032)")
    comm.add_argument("--density", type=float, action="append",
                      help="fraction of values kept (repeatable; default 0.5 and 0.1)")
    comm.add_argument("--clients-per-worker", type=int, default=1)
    comm.add_argument("--repeat", type=int, default=10, help="timed repetitions per case")
    comm.add_argument("--warmup", type=int, default=2, help="untimed repetitions per case")
    comm.add_argument("--out", default="results/bench_comm.h5")
    comm.add_argument("--overwrite", action="store_true")
    comm.add_argument("--spin", action="store_true",
                      help="blocking MPI waits instead of polling (better when ranks <= cores)")
    comm.set_defaults(func=cmd_bench_comm)
    scaling = bench_sub.add_parser("scaling", help="the same job on 2, 3, ... ranks of this launch: time per round")
    scaling.add_argument("--sizes", help="comma-separated rank counts (default: 2 up to this launch's size)")
    scaling.add_argument("--preset", help="run settings to start from (default: the digits default)")
    scaling.add_argument("--method", choices=method_names(), default="ssfl")
    scaling.add_argument("--clients", type=int, default=20)
    scaling.add_argument("--clients-per-round", type=int, default=10)
    scaling.add_argument("--rounds", type=int, default=6, help="rounds per size; the first is not timed")
    scaling.add_argument("--local-epochs", type=int, default=2)
    scaling.add_argument("--out", default="results/bench_scaling.h5")
    scaling.add_argument("--overwrite", action="store_true")
    scaling.set_defaults(func=cmd_bench_scaling)
    placement = bench_sub.add_parser("placement", help="the busiest worker's work against the ideal, static "
                                     "against balanced placement, for many launch sizes (no training)")
    _add_bench_settings(placement, preset="paper-cifar10", out="results/bench_placement.h5")
    placement.add_argument("--ranks", default="3,5,11,21,51,101", help="comma-separated launch sizes")
    placement.set_defaults(func=cmd_bench_placement)
    plain = bench_sub.add_parser("plain", help="the yardstick: the same FedAvg clients in one plain PyTorch "
                                 "process, no MPI (wall time, steps, accuracy)")
    _add_bench_settings(plain, preset="digits-compare", out="results/bench_plain.h5")
    plain.add_argument("--rounds", type=int, help="override the preset's rounds")
    plain.add_argument("--threads", type=int, default=1)
    plain.set_defaults(func=cmd_bench_plain)
    phases = bench_sub.add_parser("phases", help="one run (any run options), its round phase by phase: training "
                                  "on the slowest and the mean rank, packing, waiting, aggregation, evaluation, "
                                  "commit; start-up; disk bytes")
    _add_run_options(phases)
    phases.add_argument("--bench-out", default="results/bench_phases.h5", help="the benchmark file (the run's "
                        "own result file: --out, default beside it)")
    phases.set_defaults(func=cmd_bench_phases)
    batched = bench_sub.add_parser("batched", help="client updates per second on one rank: one client at a "
                                   "time against --batch-clients (vmap) on the digits CNN (no MPI)")
    batched.add_argument("--clients", type=int, default=100)
    batched.add_argument("--samples", type=int, default=16, help="samples per client")
    batched.add_argument("--epochs", type=int, default=2)
    batched.add_argument("--batch-size", type=int, default=16)
    batched.add_argument("--density", type=float, default=0.5)
    batched.add_argument("--threads", type=int, default=1)
    batched.add_argument("--repeat", type=int, default=5)
    batched.add_argument("--out", default="results/bench_batched.h5")
    batched.add_argument("--overwrite", action="store_true")
    batched.set_defaults(func=cmd_bench_batched)
    commit = bench_sub.add_parser("commit", help="bytes and seconds of a round's commit of the result file, "
                                  "against the checkpoint vector (no MPI, no training)")
    commit.add_argument("--params", type=int, default=11_173_962, help="model size (default ResNet-18's)")
    commit.add_argument("--density", type=float, default=0.5)
    commit.add_argument("--rounds", type=int, default=10)
    commit.add_argument("--dir", default=None, help="where the trial files go (default: beside --out)")
    commit.add_argument("--out", default="results/bench_commit.h5")
    commit.add_argument("--overwrite", action="store_true")
    commit.set_defaults(func=cmd_bench_commit)
    soak = bench_sub.add_parser("soak", help="a long digits run: peak memory and time per round, early vs late")
    soak.add_argument("--rounds", type=int, default=300)
    soak.add_argument("--early", type=int, default=30, help="the round compared with the last")
    soak.add_argument("--method", choices=method_names(), default="ssfl")
    soak.add_argument("--out", default="results/soak.h5")
    soak.add_argument("--overwrite", action="store_true")
    soak.set_defaults(func=cmd_bench_soak)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .resume import resume_point
    from .runtime import run

    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "func", "config", "preset", "resume")}
    with same_on_every_rank():
        base = load_preset(args.preset) if args.preset else {}
        base.update(load_toml(args.config) if args.config else {})
        cfg = make_config(base, options) if not args.resume else None
    world = mpi.Comm()
    resume = None
    if args.resume:
        cfg, resume = resume_point(world, args.resume, base, options)
    world.set_liveness(cfg.liveness_timeout)
    path = run(cfg, world, resume)
    if path is not None:
        logging.getLogger("ssfl_mpi").info("wrote %s", path)
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .sweep import listing, load_grid, run_sweep

    with same_on_every_rank():
        cells = load_grid(args.grid, validate=not args.list)
    if args.list:
        if mpi.world_rank() == 0:
            print(listing(cells))
        return EXIT_OK
    run_sweep(mpi.Comm(), cells, only=args.cell)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .report import report

    with same_on_every_rank():  # every rank validates the same inputs; rank 0 alone writes
        if not 0 < args.target <= 1:
            raise UsageError(f"--target must be in (0, 1], got {args.target}")
        report(args.files, out=args.out, target=args.target, networks=args.network,
               plots=not args.no_plots, metric=args.metric, write=mpi.world_rank() == 0)
    return EXIT_OK


def cmd_table(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .table import render

    with same_on_every_rank():  # every rank reads the same files, so a bad one ends each alike
        text = render(args.files, metric=args.metric)
        if args.out and mpi.world_rank() == 0:
            try:
                with open(args.out, "w") as fh:
                    fh.write(text)
            except OSError as exc:
                raise UsageError(f"cannot write --out {args.out!r}: {exc.strerror}") from None
    if mpi.world_rank() == 0:
        print(text, end="")
    return EXIT_OK


def cmd_presets(args: argparse.Namespace) -> int:
    from . import comm as mpi

    if mpi.world_rank() == 0:
        for name, summary in list_presets():
            print(f"{name:16s} {summary}")
        from .methods import registry

        print("\nmethods (--method):")
        for name, method in registry().items():
            print(f"  {name:18s} {method.summary}")
        from . import data

        print("\ndata sets (--dataset; --model auto picks the model named):")
        for name in data.names():
            spec = data.spec(name)
            print(f"  {name:18s} {spec.summary} [{spec.default_model}]")
        from . import models

        print(f"\nmodels (--model): {', '.join(models.names())}")
    return EXIT_OK


def cmd_bench_comm(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .bench import MODEL_SIZES, comm_benchmark

    with same_on_every_rank():
        for size in args.params or []:
            if not 1 <= size <= MAX_BENCH_PARAMS:
                raise UsageError(f"--params must be in [1, {MAX_BENCH_PARAMS:,}] float32 values, got {size}")
        for d in args.density or []:
            if not 0 < d <= 1:
                raise UsageError(f"--density must be in (0, 1], got {d}")
        for name, value, low in (("--clients-per-worker", args.clients_per_worker, 1), ("--repeat", args.repeat, 1),
                                 ("--warmup", args.warmup, 0)):
            if value < low:
                raise UsageError(f"{name} must be >= {low}, got {value}")
    world = mpi.Comm(spin=args.spin)
    _claim_output(world, args.out, args.overwrite)  # before measuring: never lose the figures at the end
    comm_benchmark(world, params=args.params or list(MODEL_SIZES.values()),
                   densities=args.density or [0.5, 0.1],
                   clients_per_worker=args.clients_per_worker, repeat=args.repeat,
                   warmup=args.warmup, out=args.out, overwrite=True)
    return EXIT_OK


MAX_BENCH_PARAMS = 1 << 30  # float32 values per model buffer: 4 GiB, beyond any model here


def _claim_output(world, out: str, overwrite: bool, flag: str = "--out") -> None:
    """Rank 0 checks and claims an output file before a benchmark runs; every rank agrees."""
    from .results import check_writable, claim

    error = None
    if world.is_server:
        try:
            check_writable(Path(out), overwrite=overwrite, flag=flag)
            claim(Path(out))
        except UsageError as exc:
            error = str(exc)
    world.agree(error)


def cmd_bench_scaling(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .bench import scaling_benchmark

    world = mpi.Comm()
    with same_on_every_rank():
        try:
            sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(range(2, world.size + 1))
        except ValueError:
            raise UsageError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
        values = {**(load_preset(args.preset) if args.preset else {}), "method": args.method,
                  "clients": args.clients, "clients_per_round": args.clients_per_round, "rounds": args.rounds,
                  "local_epochs": args.local_epochs}
        make_config(dict(values), {})
    _claim_output(world, args.out, args.overwrite)
    scaling_benchmark(world, sizes=sizes, cfg_values=values, out=args.out, overwrite=True)
    return EXIT_OK


# Training-set sizes of the data sets a balanced partition needs no file of (n/K per client).
KNOWN_TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "mnist": 60000, "fashionmnist": 60000}


def cmd_bench_placement(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .bench import placement_benchmark

    with same_on_every_rank():
        values = _bench_settings(args)
        try:
            ranks = [int(x) for x in args.ranks.split(",")]
        except ValueError:
            raise UsageError(f"--ranks must be comma-separated integers, got {args.ranks!r}") from None
        if min(ranks) < 2:
            raise UsageError("--ranks: every launch needs at least 2 ranks (a server and a worker)")
        cfg, sizes = _placement_inputs(values)
        if max(ranks) - 1 > cfg.clients:
            raise UsageError(f"--ranks: {max(ranks)} ranks would leave workers without clients (K = {cfg.clients})")
    if mpi.world_rank() == 0:
        placement_benchmark(cfg, ranks=ranks, sizes=sizes, out=args.out, overwrite=args.overwrite)
    return EXIT_OK


def _placement_inputs(values: dict):
    """The config and every client's n_k: from the partition where the data are here, else n/K for
    a balanced partition of a data set whose size is known (the paper presets without CIFAR)."""
    import os

    import numpy as np

    from . import data
    from .partition import balanced_sizes, split_for

    root = values.get("data_root", "data")
    missing = values.get("dataset") in KNOWN_TRAIN_SIZES and not os.path.isdir(root)
    cfg = make_config({**values, "data_root": "/" if missing else root}, {})
    if missing:
        if cfg.partition_scheme not in ("dirichlet-balanced", "iid"):
            raise UsageError(f"bench placement: {cfg.dataset} is not under {root!r} and partition "
                             f"{cfg.partition_scheme} gives unequal sizes: put the data there")
        return cfg, balanced_sizes(KNOWN_TRAIN_SIZES[cfg.dataset], cfg.clients)
    ds = data.load(cfg.dataset, root=cfg.data_root, download=False, synthetic_alpha=cfg.synthetic_alpha,
                   synthetic_beta=cfg.synthetic_beta)
    return cfg, np.array([len(p) for p in split_for(cfg, ds)], dtype=np.int64)


def cmd_bench_plain(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .plain import plain_fedavg
    from .results import check_writable, write_bench

    with same_on_every_rank():
        values = _bench_settings(args)
        if args.rounds is not None:
            values["rounds"] = args.rounds
        cfg = make_config(values, {"method": "fedavg"})
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        if mpi.world_rank() == 0:
            check_writable(Path(args.out), overwrite=args.overwrite)
    if mpi.world_rank() == 0:
        row = plain_fedavg(cfg, threads=args.threads)
        write_bench(args.out, [row], [], overwrite=args.overwrite, attrs={"kind": "plain", "config": cfg.to_json()})
    return EXIT_OK


def cmd_bench_phases(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .bench import phases_summary
    from .runtime import run

    overwrite = bool(getattr(args, "overwrite", False))
    options = {k: v for k, v in vars(args).items() if k not in ("command", "bench", "func", "config", "preset",
                                                               "resume", "bench_out")}
    options.setdefault("out", str(Path(args.bench_out).with_name(Path(args.bench_out).stem + "_run.h5")))
    with same_on_every_rank():
        if args.resume:
            raise UsageError("bench phases runs a fresh job: --resume does not apply")
        base = load_preset(args.preset) if args.preset else {}
        base.update(load_toml(args.config) if args.config else {})
        cfg = make_config(base, options)
    world = mpi.Comm()
    _claim_output(world, args.bench_out, overwrite, flag="--bench-out")
    world.set_liveness(cfg.liveness_timeout)
    path = run(cfg, world)
    if world.is_server:
        phases_summary(str(path), out=args.bench_out, overwrite=True)
    return EXIT_OK


def cmd_bench_batched(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .bench import batched_benchmark

    if min(args.clients, args.samples, args.epochs, args.batch_size, args.threads, args.repeat) < 1 \
            or not 0 < args.density <= 1 or args.samples > 1797:
        raise UsageError("bench batched: counts must be >= 1 (--samples at most the 1797 digits) and --density "
                         "in (0, 1]", collective=True)
    if mpi.world_rank() == 0:
        batched_benchmark(clients=args.clients, samples=args.samples, epochs=args.epochs,
                          batch_size=args.batch_size, density=args.density, threads=args.threads,
                          repeat=args.repeat, out=args.out, overwrite=args.overwrite)
    return EXIT_OK


def cmd_bench_commit(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .bench import commit_benchmark

    if args.params < 1 or not 0 < args.density <= 1 or args.rounds < 1:
        raise UsageError("bench commit: --params and --rounds must be >= 1 and --density in (0, 1]",
                         collective=True)
    if mpi.world_rank() == 0:
        directory = args.dir or str(Path(args.out).parent)
        Path(directory).mkdir(parents=True, exist_ok=True)
        commit_benchmark(params=args.params, density=args.density, rounds=args.rounds, directory=directory,
                         out=args.out, overwrite=args.overwrite)
    return EXIT_OK


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .soak import soak

    if not 1 <= args.early < args.rounds:
        raise UsageError(f"--early must be in [1, --rounds), got {args.early}", collective=True)
    soak(mpi.Comm(), rounds=args.rounds, early=args.early, out=args.out, overwrite=args.overwrite,
         method=args.method)
    return EXIT_OK


def _setup_logging() -> None:
    from . import comm as mpi

    level = logging.INFO if mpi.world_rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=True)


def main(argv: list[str] | None = None) -> int:
    from . import comm as mpi
    from .lifecycle import STOP, keep_freed_memory
    from .results import release_all

    STOP.install()  # before anything can take long: see lifecycle.StopFlag
    try:
        _setup_logging()
        with same_on_every_rank():
            keep_freed_memory()
            args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        release_all()  # before the report, which may end the job (MPI_Abort): no lock file stays
        mpi.report_usage_error(str(exc), collective=exc.collective)
        return EXIT_USAGE
    except Interrupted:
        logging.getLogger("ssfl_mpi").info("stopped by a signal at a round boundary; the checkpoint "
                                           "is written: continue with --resume (a sweep: run it again)")
        return EXIT_INTERRUPTED
    except RunError as exc:
        code = getattr(exc, "code", EXIT_FAILURE)  # a worker repeating the server's last word keeps its code
        release_all()
        mpi.report_run_error(str(exc), code=code)
        return code
    except WriteFailed as exc:
        release_all()
        mpi.report_run_error(str(exc), code=EXIT_WRITE)
        return EXIT_WRITE
    except BaseException as exc:  # noqa: BLE001 - any other failure ends every rank, traceback once
        if isinstance(exc, SystemExit) and exc.code in (0, None):  # --help
            return EXIT_OK
        release_all()
        mpi.abort_with_traceback(exc)
        return EXIT_FAILURE
    finally:
        release_all()
