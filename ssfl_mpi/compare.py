"""Result files grouped into comparable cells for `table` and `report`, and what was left out, and why.

Runs share a cell only when everything but the seed is equal: every setting that changes what a
run computes (paths, threads, device, checkpoint and evaluation cadence aside), the rounds they
completed, and their partition settings. A second run with the same settings and seed is a
duplicate and is left out; so is a run that is unfinished or lacks the metric asked for. Files
that are not readable result files are errors (exit 2, one line naming the file and the defect).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .config import RUNTIME_KEYS, Config
from .errors import UsageError
from .results import ROUND_FIELDS, Untrusted, read

# Keys that do not change a run's numbers, besides the seed that a cell averages over.
NOT_COMPARED = set(RUNTIME_KEYS) | {"seed", "eval_every"}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}

# --metric NAME: (round column, what it is). "acc" is the paper's number: the SSFL authors' code pools
# correct/total over all clients' test splits, which together are the whole test set exactly once.
METRICS = {
    "acc": ("test_accuracy", "the global model's accuracy on the whole test set (the paper's accuracy: the "
            "SSFL authors' code pools all clients' test splits, which are the whole test set once)"),
    "client": ("client_accuracy", "the global model's accuracy on each client's own test split, "
               "unweighted mean over clients (a per-client view of the global model, not the paper's number)"),
    "local": ("local_accuracy", "each client's last local model (the one it sent up the last time it trained) on "
              "its own test split, unweighted mean over the clients that have trained (the SSFL code's "
              "\"personal\" accuracy; static-mask methods)"),
    "personal": ("personal_accuracy", "each client's own model (DisPFL's own weights; the global one inside "
                 "the client's own mask for LotteryFL and client-wise masks; the global one otherwise) on its own "
                 "test split, unweighted mean over clients"),
}


@dataclass
class Run:
    path: str
    attrs: dict
    config: dict
    rounds: dict
    acc: np.ndarray  # the chosen metric per round (NaN where not evaluated)
    label: str = ""

    @property
    def sparsity(self) -> float:
        return float(self.attrs["sparsity"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def final(self) -> float:
        done = self.acc[np.isfinite(self.acc)]
        return float(done[-1]) if len(done) else float("nan")

    def settings(self) -> tuple:
        """Everything but the seed that must agree between runs averaged together."""
        # A setting added after a file was written is taken at its default (which is what that
        # file's run did), so old and new files of the same settings still average together.
        cfg = {k: v for k, v in {**DEFAULTS, **self.config}.items() if k not in NOT_COMPARED}
        return (json.dumps(cfg, sort_keys=True), len(self.rounds["round"]))


@dataclass
class Selection:
    cells: dict = field(default_factory=dict)  # (label, sparsity) -> [Run], sorted for display
    left_out: list = field(default_factory=list)  # (path, reason)

    @property
    def runs(self) -> list:
        return [r for group in self.cells.values() for r in group]


def variant(cfg: dict) -> str:
    """A row label that tells apart the runs the comparison distinguishes: the method's own
    (`Method.label`); a method this version does not know is labelled by its name."""
    from . import methods

    return methods.get(cfg["method"]).label(cfg) if cfg["method"] in methods.names() else str(cfg["method"])


def check_run(path: str, d: dict) -> None:
    """Structure and consistency of a result file's rows: a defect is a one-line usage error."""
    rounds = d["rounds"]
    missing = [k for k in ("round", "test_accuracy", "bytes_up", "bytes_down") if k not in rounds]
    if missing:
        raise UsageError(f"{path!r}: no /rounds/{missing[0]} (not a complete ssfl-mpi result file)")
    n = len(rounds["round"])
    uneven = [k for k in rounds if k in ROUND_FIELDS and len(rounds[k]) != n]
    if uneven:
        raise UsageError(f"{path!r}: /rounds/{uneven[0]} has {len(rounds[uneven[0]])} entries, "
                         f"/rounds/round {n}")
    if not np.array_equal(rounds["round"], np.arange(1, n + 1)):
        raise UsageError(f"{path!r}: /rounds/round is not 1..{n}")
    for key in ("rounds", "seed", "clients", "method"):
        if key not in d["config"]:
            raise UsageError(f"{path!r}: its stored config has no {key!r}")
    if "sparsity" not in d["attrs"]:
        raise UsageError(f"{path!r}: no sparsity attribute (not a complete ssfl-mpi result file)")


def select(paths: list[str], metric: str = "acc") -> Selection:
    """Read, validate and group result files; see the module docstring for the rules."""
    if metric not in METRICS:
        raise UsageError(f"--metric: unknown value {metric!r} (choose from {', '.join(METRICS)})")
    column = METRICS[metric][0]
    sel = Selection()
    runs = []
    for path in paths:
        try:
            d = read(path)
        except Untrusted as exc:  # its numbers are not shown as good; the others still are
            sel.left_out.append((path, str(exc).removeprefix(f"{path!r} ")))
            continue
        check_run(path, d)
        status, n = d["attrs"]["status"], len(d["rounds"]["round"])
        if status != "complete":
            sel.left_out.append((path, f"status {status}, {n} rounds"))
            continue
        if n != int(d["config"]["rounds"]):
            sel.left_out.append((path, f"marked complete with {n} of {d['config']['rounds']} rounds"))
            continue
        if column not in d["rounds"]:
            sel.left_out.append((path, f"no {column} column (written by schema {d['attrs']['schema']})"))
            continue
        acc = np.asarray(d["rounds"][column], dtype=np.float64)
        if not np.isfinite(acc[-1]):
            sel.left_out.append((path, f"{column} of the last round is not a number"))
            continue
        runs.append(Run(path, d["attrs"], d["config"], d["rounds"], acc, variant(d["config"])))
    groups = defaultdict(list)
    for run in runs:
        groups[run.settings()].append(run)
    for key, group in groups.items():
        kept = {}
        for run in group:
            if run.seed in kept:
                sel.left_out.append((run.path, f"same settings and seed {run.seed} as {kept[run.seed].path!r}"))
            else:
                kept[run.seed] = run
        groups[key] = list(kept.values())
    _name_groups(groups)
    cells = {}
    for group in groups.values():
        cells[group[0].label, group[0].sparsity] = sorted(group, key=lambda r: r.seed)
    sel.cells = dict(sorted(cells.items(), key=lambda kv: (kv[0][0] != "fedavg (dense)", kv[0][0], kv[0][1])))
    return sel


def _name_groups(groups: dict) -> None:
    """Groups whose label and sparsity coincide differ in some setting: name it in their labels."""
    by_cell = defaultdict(list)
    for group in groups.values():
        by_cell[group[0].label, group[0].sparsity].append(group)
    for clashing in by_cell.values():
        if len(clashing) < 2:
            continue
        configs = [{k: v for k, v in g[0].config.items() if k not in NOT_COMPARED} for g in clashing]
        keys = sorted({k for c in configs for k in c if any(c.get(k) != o.get(k) for o in configs)})
        rounds = {len(g[0].rounds["round"]) for g in clashing}
        for group, cfg in zip(clashing, configs):
            extra = [f"{k}={cfg.get(k)}" for k in keys]
            if len(rounds) > 1 and "rounds" not in keys:
                extra.append(f"{len(group[0].rounds['round'])} rounds")
            for run in group:
                run.label = f"{run.label} [{', '.join(extra)}]"
