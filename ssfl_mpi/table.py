"""Comparison tables from result files: final accuracy mean ± spread over seeds, MB per round."""

from __future__ import annotations

import logging

import numpy as np

from .compare import METRICS, Selection, select

log = logging.getLogger("ssfl_mpi")


def _cell(values: list[float], scale: float = 100.0) -> str:
    v = np.asarray(values) * scale
    spread = f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else ""
    return f"{v.mean():.1f}{spread}"


def _density(group: list) -> str:
    """Achieved density up/down (mean over rounds and seeds) where it is not the run's mask density:
    what SparsyFed, Top-K and DisPFL really sent."""
    if any("density_up" not in r.rounds or "density" not in r.attrs for r in group):
        return ""
    up = float(np.mean([np.nanmean(r.rounds["density_up"]) for r in group]))
    down = float(np.mean([np.nanmean(r.rounds["density_down"]) for r in group]))
    mask = float(np.mean([r.attrs["density"] for r in group]))
    if abs(up - mask) < 1e-3 and abs(down - mask) < 1e-3:
        return ""
    return f", density {up:.2f} up / {down:.2f} down"


def markdown(sel: Selection, *, metric: str = "acc") -> str:
    """Rows: variants; columns: sparsities; a cell: mean ± sample std over seeds, MB up+down per
    round, and n, the number of seeds averaged. Left-out files are listed under the table."""
    cells = sel.cells
    sparsities = sorted({s for _, s in cells if s > 0}) or [0.0]
    labels = sorted({label for label, _ in cells}, key=lambda l: (l != "fedavg (dense)", l))
    head = "| method | " + " | ".join(f"S = {s:g}" for s in sparsities) + " |"
    lines = [f"Final accuracy (%): {METRICS[metric][1]}; mean ± sample std over the n seeds; MB per round "
             f"up + down in brackets, with the density sent up and down where it is not the mask's.", "", head, "|---" * (len(sparsities) + 1) + "|"]
    for label in labels:
        row = []
        for s in sparsities:
            group = cells.get((label, s)) or cells.get((label, 0.0))
            if not group:
                row.append("–")
                continue
            mb = np.mean([np.mean(r.rounds["bytes_up"] + r.rounds["bytes_down"]) for r in group]) / 1e6
            row.append(f"{_cell([r.final for r in group])} ({mb:.3f} MB{_density(group)}) n={len(group)}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    if sel.left_out:
        lines += ["", "Left out:"] + [f"- `{path}`: {why}" for path, why in sel.left_out]
    return "\n".join(lines) + "\n"


def render(paths: list[str], *, metric: str = "acc") -> str:
    sel = select(paths, metric)
    for path, why in sel.left_out:
        log.warning("left out %s: %s", path, why)
    return markdown(sel, metric=metric)
