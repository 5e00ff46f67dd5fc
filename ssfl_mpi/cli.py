"""Command line: `ssfl-mpi run|bench ...`, one small function per subcommand."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from .config import (DATASETS, DEVICES, LR_SCHEDULES, MASK_DISTRIBUTIONS, METHODS, MODELS, PARTITIONS,
                     SALIENCY_WEIGHTINGS, load_toml, make_config)
from .presets import list_presets, load_preset
from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Interrupted, RunError,
                     UsageError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line and exit 2 on every rank, not a usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


# (flag, type or choices, help). Defaults live in Config only: unset flags do not override the file.
RUN_OPTIONS = [
    ("--method", METHODS, "federated method"),
    ("--dataset", DATASETS, "data set; digits and synthetic ship offline"),
    ("--data-root", str, "folder holding torchvision data sets"),
    ("--model", MODELS, "model; auto picks by data set"),
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
    ("--saliency-batches", int, "minibatches Q per client for SSFL saliency"),
    ("--saliency-weighting", SALIENCY_WEIGHTINGS, "SSFL score weights: n_k/n or uniform"),
    ("--mask-distribution", MASK_DISTRIBUTIONS, "random masks (random, random-clientwise, feddst's "
     "start): global uniform, uniform per layer, or Erdos-Renyi-Kernel"),
    ("--readjust-every", int, "feddst/prunefl: rounds between mask readjustments"),
    ("--readjust-ratio", float, "feddst: fraction of active weights pruned and regrown, cosine-decayed"),
    ("--prox-mu", float, "FedProx proximal term mu (0: off), any method"),
    ("--lr-schedule", LR_SCHEDULES, "constant; exp-round: lr*decay^(round-1); cosine-restarts: "
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
        if isinstance(kind, tuple):
            p.add_argument(flag, choices=kind, default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text)
    p.add_argument("--download", action="store_true", default=argparse.SUPPRESS,
                   help="let torchvision download the data set (needs network)")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                   help="replace an existing result file")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssfl-mpi", description="Salient Sparse Federated Learning over MPI. "
                     "Launch with mpirun -n N (rank 0: server, ranks 1..N-1: clients).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="one federated run, results to HDF5")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    table = sub.add_parser("table", help="comparison table (markdown) of result files")
    table.add_argument("files", nargs="+", metavar="FILE.h5")
    table.add_argument("--metric", choices=("acc", "personal"), default="acc",
                       help="final global test accuracy, or the personal one")
    table.add_argument("--out", help="also write the table to this file")
    table.set_defaults(func=cmd_table)
    presets = sub.add_parser("presets", help="list the shipped presets")
    presets.set_defaults(func=cmd_presets)
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    comm = bench_sub.add_parser("comm", help="time one round's model traffic per transport")
    comm.add_argument("--params", type=int, default=11_173_962,
                      help="model size in float32 values (default: ResNet-18, CIFAR-10)")
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
    soak = bench_sub.add_parser("soak", help="a long digits run: peak memory and time per round, early vs late")
    soak.add_argument("--rounds", type=int, default=300)
    soak.add_argument("--early", type=int, default=30, help="the round compared with the last")
    soak.add_argument("--method", choices=METHODS, default="ssfl")
    soak.add_argument("--out", default="results/soak.h5")
    soak.add_argument("--overwrite", action="store_true")
    soak.set_defaults(func=cmd_bench_soak)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .runtime import run

    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "func", "config", "preset", "resume")}
    with _same_on_every_rank():
        base = load_preset(args.preset) if args.preset else {}
        base.update(load_toml(args.config) if args.config else {})
        cfg = make_config(base, options) if not args.resume else None
    world = mpi.Comm()
    resume = None
    if args.resume:
        cfg, resume = _resume(world, args.resume, base, options)
    path = run(cfg, world, resume)
    if path is not None:
        logging.getLogger("ssfl_mpi").info("wrote %s", path)
    return EXIT_OK


def _resume(world, path: str, base: dict, options: dict):
    """The file's config (flags may change only where and how it runs) and its checkpoint."""
    from pathlib import Path

    from .config import Config
    from .results import read_checkpoint
    from .runtime import ResumePoint

    error, ck = None, None
    if world.is_server:
        try:
            ck = read_checkpoint(path)
            if ck["status"] == "complete":
                raise UsageError(f"--resume: {path!r} is already complete; nothing to resume")
        except UsageError as exc:
            error = str(exc)
    world.agree(error)
    saved_values, round_ = world.bcast_object((ck["config"], ck["round"]) if world.is_server else None)
    with _same_on_every_rank():
        try:
            saved = Config(**saved_values)
        except (TypeError, UsageError) as exc:
            raise UsageError(f"--resume: the config stored in {path!r} is not valid here ({exc})") from None
        wanted = make_config({**saved_values, **base}, {**options, "out": path})
        changed = saved.experiment_diff(wanted)
        if changed:
            detail = ", ".join(f"{k} ({getattr(saved, k)!r} in the file, {getattr(wanted, k)!r} now)"
                               for k in changed)
            raise UsageError(f"--resume: {path!r} was run with other settings: {detail}; resume without "
                             f"them or start a new run with --out")
    point = ResumePoint(path=Path(path), round=round_, vector=ck["vector"] if ck else None,
                        kept=ck["kept"] if ck else None, row=ck["row"] if ck else None)
    logging.getLogger("ssfl_mpi").info("resuming %s after round %d", path, round_)
    return wanted, point


def cmd_table(args: argparse.Namespace) -> int:
    from .table import markdown, summarize

    with _same_on_every_rank():  # every rank reads the same files
        text = markdown(summarize(args.files), metric=args.metric)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return EXIT_OK


def cmd_presets(args: argparse.Namespace) -> int:
    from . import comm as mpi

    if mpi.world_rank() == 0:
        for name, summary in list_presets():
            print(f"{name:16s} {summary}")
    return EXIT_OK


def cmd_bench_comm(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .bench import comm_benchmark

    comm_benchmark(mpi.Comm(spin=args.spin), params=args.params, densities=args.density or [0.5, 0.1],
                   clients_per_worker=args.clients_per_worker, repeat=args.repeat,
                   warmup=args.warmup, out=args.out, overwrite=args.overwrite)
    return EXIT_OK


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from . import comm as mpi
    from .soak import soak

    if not 1 <= args.early < args.rounds:
        raise UsageError(f"--early must be in [1, --rounds), got {args.early}", collective=True)
    soak(mpi.Comm(), rounds=args.rounds, early=args.early, out=args.out, overwrite=args.overwrite,
         method=args.method)
    return EXIT_OK


@contextlib.contextmanager
def _same_on_every_rank():
    """Errors in here come from the same argv and files on every rank: no abort is needed."""
    try:
        yield
    except UsageError as exc:
        raise UsageError(str(exc), collective=True) from None


def _setup_logging() -> None:
    from . import comm as mpi

    level = logging.INFO if mpi.world_rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=True)


def main(argv: list[str] | None = None) -> int:
    from . import comm as mpi

    try:
        _setup_logging()
        with _same_on_every_rank():
            args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        mpi.report_usage_error(str(exc), collective=exc.collective)
        return EXIT_USAGE
    except Interrupted:
        logging.getLogger("ssfl_mpi").info("stopped by a signal at a round boundary; the checkpoint "
                                               "is written: continue with --resume")
        return EXIT_INTERRUPTED
    except RunError as exc:
        mpi.report_run_error(str(exc))
        return EXIT_FAILURE
    except BaseException as exc:  # noqa: BLE001 - any other failure ends every rank, traceback once
        if isinstance(exc, SystemExit) and exc.code in (0, None):  # --help
            return EXIT_OK
        mpi.abort_with_traceback(exc)
        return EXIT_FAILURE
