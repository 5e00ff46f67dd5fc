"""Comparison tables from result files: final accuracy mean ± spread over seeds, MB per round."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from .results import read

log = logging.getLogger("ssfl_mpi")


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
        return "ssfl" + (f" ({', '.join(knobs)})" if knobs else "")
    return method


def summarize(paths: list[str]) -> dict:
    """(label, sparsity) -> {"acc": [...], "personal": [...], "mb": [...]} over complete runs."""
    cells = defaultdict(lambda: defaultdict(list))
    for path in paths:
        d = read(path)
        if d["attrs"]["status"] != "complete":
            log.warning("skipping %s: status %s", path, d["attrs"]["status"])
            continue
        rounds = d["rounds"]
        key = (variant(d["config"]), float(d["attrs"]["sparsity"]))
        cells[key]["acc"].append(float(rounds["test_accuracy"][-1]))
        cells[key]["personal"].append(float(rounds["personal_accuracy"][-1]))
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
    lines = [head, "|---" * (len(sparsities) + 1) + "|"]
    for label in labels:
        row = []
        for s in sparsities:
            c = cells.get((label, s)) or cells.get((label, 0.0))
            if not c:
                row.append("–")
                continue
            n = "" if len(c[metric]) == 3 else f" [n={len(c[metric])}]"
            row.append(f"{_cell(c[metric])} ({np.mean(c['mb']):.3f} MB){n}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
