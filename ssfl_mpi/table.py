"""Comparison tables from result files: final accuracy mean ± spread over seeds, MB per round."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from .results import read

log = logging.getLogger("ssfl_mpi")

# --metric NAME: (round column, what it is). "client" is the number the SSFL and DisPFL codes report.
METRICS = {
    "acc": ("test_accuracy", "the global model's accuracy on the whole test set"),
    "client": ("client_accuracy", "the global model's accuracy on each client's own test split, "
               "unweighted mean over clients (what the SSFL authors' and DisPFL's codes report)"),
    "personal": ("personal_accuracy", "each client's own model (the global one inside its own mask) on "
                 "its own test split, unweighted mean over clients"),
}


def metric_series(rounds: dict, metric: str) -> np.ndarray | None:
    """The per-round values of a metric (NaN where not evaluated), None if the file lacks it."""
    return rounds.get(METRICS[metric][0])


def variant(cfg: dict) -> str:
    """A row label that tells apart the runs the comparison distinguishes (method and its knobs)."""
    method = cfg["method"]
    if method == "fedavg":
        return "fedavg (dense)"
    if method in ("random", "random-clientwise", "feddst"):
        return f"{method} ({cfg['mask_distribution']})"
    if method == "ssfl":
        knobs = []
        if cfg["saliency_weighting"] != "data-size":
            knobs.append(f"{cfg['saliency_weighting']} weights")
        if cfg["saliency_batches"] != 1:
            knobs.append(f"Q={cfg['saliency_batches']}")
        # Files of schema 1 lack these keys: they ran this project's defaults.
        for key, default in (("saliency_score", "abs-mean-grad"), ("saliency_input", "plain"),
                             ("topk_ties", "exact-k")):
            if cfg.get(key, default) != default:
                knobs.append(cfg[key])
        return "ssfl" + (f" ({', '.join(knobs)})" if knobs else "")
    return method


def _final(series: np.ndarray) -> float:
    done = series[np.isfinite(series)]
    return float(done[-1]) if len(done) else float("nan")


def summarize(paths: list[str]) -> dict:
    """(label, sparsity) -> {"acc": [...], "client": [...], "personal": [...], "mb": [...]} over complete runs."""
    cells = defaultdict(lambda: defaultdict(list))
    for path in paths:
        d = read(path)
        if d["attrs"]["status"] != "complete":
            log.warning("skipping %s: status %s", path, d["attrs"]["status"])
            continue
        rounds = d["rounds"]
        key = (variant(d["config"]), float(d["attrs"]["sparsity"]))
        for metric in METRICS:
            series = metric_series(rounds, metric)
            cells[key][metric].append(_final(series) if series is not None else float("nan"))
        cells[key]["mb"].append(float(np.mean(rounds["bytes_up"] + rounds["bytes_down"])) / 1e6)
        cells[key]["seed"].append(int(d["attrs"]["seed"]))
    return cells


def _cell(values: list[float], scale: float = 100.0) -> str:
    v = np.asarray(values) * scale
    spread = f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else ""
    return f"{v.mean():.1f}{spread}"


def markdown(cells: dict, *, metric: str = "acc") -> str:
    """Rows: variants; columns: sparsities; a cell: mean ± sample std over seeds (MB up+down per round)."""
    sparsities = sorted({s for _, s in cells if s > 0})
    labels = sorted({label for label, _ in cells}, key=lambda l: (l != "fedavg (dense)", l))
    head = "| method | " + " | ".join(f"S = {s:g}" for s in sparsities) + " |"
    lines = [f"Final accuracy (%): {METRICS[metric][1]}; mean ± sample std over seeds; MB per round "
             f"up + down in brackets; – where a file has no such column.", "", head,
             "|---" * (len(sparsities) + 1) + "|"]
    for label in labels:
        row = []
        for s in sparsities:
            c = cells.get((label, s)) or cells.get((label, 0.0))
            if not c:
                row.append("–")
                continue
            values = [v for v in c[metric] if np.isfinite(v)]
            if not values:
                row.append("–")
                continue
            n = "" if len(values) == 3 else f" [n={len(values)}]"
            row.append(f"{_cell(values)} ({np.mean(c['mb']):.3f} MB){n}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
