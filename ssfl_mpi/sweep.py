"""`sweep GRID.toml`: many runs, one after another inside one mpirun; done cells are skipped,
interrupted ones resumed.

A grid file:

    out_dir = "results/digits-compare"   # where the cells' result files go
    name = "{label}_s{sparsity}_seed{seed}"   # file name (without .h5) from the cell's values
    [base]                                # options of every cell (run's names; preset allowed)
    preset = "digits-compare"
    [axes]                                # the cartesian product of these
    seed = [0, 1, 2]
    sparsity = [0.5, 0.8]
    [[variants]]                          # optional: each variant is crossed with the axes
    label = "ssfl"                        # a name for file names and tables, not a run option
    method = "ssfl"
    [[variants]]
    label = "fedavg"
    method = "fedavg"
    name = "fedavg_seed{seed}"            # a variant may have its own name ...
    axes = { sparsity = [0.0] }           # ... and its own axes
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import FIELD_NAMES, Config, make_config, read_toml
from .errors import RunError, UsageError, WriteFailed
from .presets import load_preset

GRID_KEYS = {"out_dir", "name", "base", "axes", "variants"}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}  # names may use any option's value
VARIANT_KEYS = {"label", "name", "axes"}


@dataclass(frozen=True)
class Cell:
    index: int
    name: str
    options: dict  # run options, preset already merged
    path: Path
    varied: tuple = ()  # the options its variant and axes set (what tells it from the base)


def _options(raw: dict, where: str) -> dict:
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "preset":
            out = {**load_preset(value), **out}
            continue
        if name not in FIELD_NAMES or name == "out":
            raise UsageError(f"grid {where}: unknown run option {key!r}")
        out[name] = value
    return out


def grid_file(name: str) -> Path:
    """A path, or the name of a shipped grid (ssfl_mpi/grids/NAME.toml)."""
    path = Path(name)
    if path.exists() or path.suffix == ".toml":
        return path
    shipped = resources.files("ssfl_mpi") / "grids" / f"{name}.toml"
    if not shipped.is_file():
        raise UsageError(f"grid {name!r}: no such file, and no shipped grid of that name")
    return Path(str(shipped))


def load_grid(name: str, *, validate: bool = True) -> list[Cell]:
    path = grid_file(name)
    raw = read_toml(path, what="grid")
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise UsageError(f"grid file {str(path)!r}: unknown keys {sorted(unknown)} (allowed: {sorted(GRID_KEYS)})")
    out_dir = Path(raw.get("out_dir", "results/sweep"))
    base = _options(raw.get("base", {}), "[base]")
    axes = raw.get("axes", {})
    variants = raw.get("variants", [{}])
    cells, seen = [], set()
    for v in variants:
        v_axes = {**axes, **v.get("axes", {})}
        for key, values in v_axes.items():
            if not isinstance(values, list) or not values:
                raise UsageError(f"grid axis {key!r} must be a non-empty list, got {values!r}")
        v_opts = _options({k: x for k, x in v.items() if k not in VARIANT_KEYS}, f"variant {v.get('label', '')!r}")
        template = v.get("name", raw.get("name", "cell{index}"))
        keys = list(v_axes)
        for combo in itertools.product(*(v_axes[k] for k in keys)):
            point = dict(zip(keys, combo))
            options = {**base, **v_opts, **_options(point, "[axes]")}
            index = len(cells)
            try:
                name = template.format(index=index, label=v.get("label", options.get("method", "")),
                                       **{**DEFAULTS, **options, **point})
            except KeyError as exc:
                raise UsageError(f"grid name {template!r}: no value for {exc}") from None
            except (ValueError, IndexError, AttributeError, TypeError) as exc:
                raise UsageError(f"grid name {template!r} is not a valid format string: {exc}") from None
            if not name or "/" in name or name in (".", ".."):
                raise UsageError(f"grid name {template!r} gives the file name {name!r}: it must be a plain "
                                 f"non-empty name without '/'")
            if name in seen:
                raise UsageError(f"grid: two cells are both named {name!r}; put the axis that tells "
                                 f"them apart into the name")
            seen.add(name)
            if validate:  # every cell is valid (data present, ...) before the first one runs
                make_config(dict(options), {})
            varied = tuple(dict.fromkeys([*v_opts, *_options(point, "[axes]")]))
            cells.append(Cell(index=index, name=name, options=options, path=out_dir / f"{name}.h5", varied=varied))
    return cells


def cell_status(path: Path) -> str:
    """'missing', or the file's status ('complete', 'running', 'interrupted', 'failed')."""
    import h5py

    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r", locking=False) as f:
            return str(f.attrs.get("status", "foreign"))
    except OSError:
        return "unreadable"


def run_sweep(world, cells: list[Cell], *, only: int | None = None) -> dict:
    """Run the cells in order (or cell `only`); returns counts of what was done."""
    import logging

    from .resume import resume_point
    from .runtime import run

    log = logging.getLogger("ssfl_mpi")
    if only is not None and not 0 <= only < len(cells):
        raise UsageError(f"--cell {only}: the grid has cells 0..{len(cells) - 1}", collective=True)
    done = {"ran": 0, "resumed": 0, "skipped": 0, "failed": 0}
    for cell in cells if only is None else [cells[only]]:
        status = world.bcast_object(cell_status(cell.path) if world.is_server else None)
        if status == "complete":
            done["skipped"] += 1
            log.info("cell %d %s: complete, skipped", cell.index, cell.name)
            continue
        if status == "failed" and only is None:
            # A failed cell fails again the same way (the same seed, the same data): the sweep goes on.
            done["failed"] += 1
            log.warning("cell %d %s: failed in an earlier launch (%s), skipped; run it again with --cell %d "
                        "(it resumes from its checkpoint) or delete the file", cell.index, cell.name,
                        cell.path, cell.index)
            continue
        if status in ("unreadable", "foreign"):
            raise UsageError(f"cell {cell.index}: {str(cell.path)!r} exists but is not an ssfl-mpi result "
                             f"file: move it away", collective=True)
        log.info("cell %d/%d %s: %s", cell.index, len(cells) - 1, cell.name,
                 "starting" if status == "missing" else f"{status}, resuming")
        try:
            if status == "missing":
                cfg = make_config(dict(cell.options), {"out": str(cell.path)})
                world.set_liveness(cfg.liveness_timeout)
                run(cfg, world)
                done["ran"] += 1
            else:
                cfg, point = resume_point(world, str(cell.path), dict(cell.options), {})
                world.set_liveness(cfg.liveness_timeout)
                run(cfg, world, point)
                done["resumed"] += 1
        except (UsageError, RunError, WriteFailed) as exc:
            tag = f"sweep cell {cell.index} ({cell.name}): "
            if not str(exc).startswith(tag):  # a worker repeats the server's line, tagged already
                exc.args = (tag + str(exc), *exc.args[1:])
            raise
    log.info("sweep: %d run, %d resumed, %d already complete, %d failed before (skipped)", done["ran"],
             done["resumed"], done["skipped"], done["failed"])
    return done


def _flag(key: str, value) -> str:
    flag = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def listing(cells: list[Cell]) -> str:
    lines = []
    for c in cells:
        opts = " ".join(_flag(k, c.options[k]) for k in c.varied)
        lines.append(f"{c.index:4d}  {cell_status(c.path):11s}  {c.path}  {opts}")
    return "\n".join(lines)
