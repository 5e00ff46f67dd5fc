"""Shipped run settings (`--preset NAME`): TOML files in ssfl_mpi/presets, first comment line = summary."""

from __future__ import annotations

from importlib import resources

from .config import load_toml
from .errors import UsageError


def _files() -> dict:
    folder = resources.files("ssfl_mpi") / "presets"
    return {p.name[:-5]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def list_presets() -> list[tuple[str, str]]:
    out = []
    for name, path in sorted(_files().items()):
        first = path.read_text().splitlines()[0] if path.read_text() else ""
        out.append((name, first.lstrip("# ").strip()))
    return out


def load_preset(name: str) -> dict:
    files = _files()
    if name not in files:
        raise UsageError(f"--preset: unknown preset {name!r} (choose from {', '.join(sorted(files))})")
    with resources.as_file(files[name]) as path:
        return load_toml(path)
