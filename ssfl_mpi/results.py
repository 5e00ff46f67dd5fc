"""The HDF5 result file: schema, writer (rank 0 only) and reader."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

import h5py
import numpy as np

from .errors import UsageError

SCHEMA = "ssfl-mpi/1"
STATUSES = ("running", "complete", "interrupted", "failed")

# /rounds/<name>: one entry per completed round. Units are in the names' documentation below.
ROUND_FIELDS = {
    "round": np.int64,            # 1-based round number
    "test_accuracy": np.float64,  # global model on the global test set, in [0, 1]; NaN if not evaluated
    "personal_accuracy": np.float64,  # mean over clients of the accuracy of their model (the global one
                                  # inside their own mask) on their own test split; NaN if not evaluated
    "test_loss": np.float64,      # mean cross-entropy on the test set; NaN if not evaluated
    "train_loss": np.float64,     # n_k-weighted mean of the sampled clients' local training loss
    "bytes_up": np.int64,         # payload bytes the round's clients send: float32 values, plus
                                  # header, mask metadata and extras for dynamic methods
    "bytes_down": np.int64,       # payload bytes the round's clients receive, counted the same way
    "meta_bytes_up": np.int64,    # the part of bytes_up that is not weight values (0 for static masks)
    "meta_bytes_down": np.int64,  # the part of bytes_down that is not weight values
    "masks_bitmap": np.int64,     # messages this round whose mask travelled as a bitmap
    "masks_indices": np.int64,    # messages this round whose mask travelled as int32 indices
    "mask_changes": np.int64,     # prunable weights that entered or left the shared mask this round
    "time_compute": np.float64,   # seconds of local training, max over worker ranks
    "time_comm": np.float64,      # seconds inside round-protocol MPI calls (waits included), max over workers
    "time_round": np.float64,     # server wall seconds from the round's broadcast to its aggregate
}


def _versions() -> dict:
    import mpi4py
    import torch
    from . import __version__
    return {"ssfl_mpi": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "mpi4py": mpi4py.__version__}


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Refuse before any training: an existing result is never overwritten silently."""
    if path.exists() and not overwrite:
        raise UsageError(f"result file {str(path)!r} exists: choose another --out or pass --overwrite")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create directory {str(parent)!r} for --out: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"directory {str(parent)!r} of --out is not writable")


class ResultWriter:
    """Owned by rank 0. Every round is appended and flushed, so a killed run keeps its rounds."""

    def __init__(self, path: Path, *, overwrite: bool, attrs: dict):
        self.path = Path(path)
        try:
            # Default libver on purpose: "latest" marks the file open-for-write, and a writer
            # killed by MPI_Abort then leaves a file that h5py refuses to open without h5clear.
            self.f = h5py.File(self.path, "w" if overwrite else "w-")
        except OSError as exc:
            raise UsageError(f"cannot create result file {str(self.path)!r}: {exc}") from None
        a = self.f.attrs
        a["schema"] = SCHEMA
        a["status"] = "running"
        a["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        a["host"] = socket.gethostname()
        for key, value in _versions().items():
            a[f"version_{key}"] = str(value)
        for key, value in attrs.items():
            a[key] = value
        rounds = self.f.create_group("rounds")
        for name, dtype in ROUND_FIELDS.items():
            rounds.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(256,))
        self.f.flush()

    def set_attrs(self, **attrs) -> None:
        for key, value in attrs.items():
            self.f.attrs[key] = value

    def write_partition(self, sizes: np.ndarray, label_counts: np.ndarray) -> None:
        g = self.f.create_group("partition")
        g.create_dataset("client_sizes", data=np.asarray(sizes, dtype=np.int64))
        g.create_dataset("label_counts", data=np.asarray(label_counts, dtype=np.int64))

    def write_mask(self, kept: np.ndarray, layers: list[tuple[str, int, int]]) -> None:
        """The mask; written again at the end for methods whose mask changes (the final one)."""
        if "mask" in self.f:
            del self.f["mask"]
        g = self.f.create_group("mask")
        g.create_dataset("flat", data=np.asarray(kept, dtype=bool), compression="gzip", shuffle=True)
        dtype = np.dtype([("name", h5py.string_dtype()), ("size", np.int64), ("kept", np.int64),
                          ("density", np.float64)])
        rows = np.array([(n, s, k, k / s) for n, s, k in layers], dtype=dtype)
        g.create_dataset("layers", data=rows)

    def append_round(self, row: dict) -> None:
        if set(row) != set(ROUND_FIELDS):
            raise ValueError(f"round row fields {sorted(row)} != schema {sorted(ROUND_FIELDS)}")
        rounds = self.f["rounds"]
        n = rounds["round"].shape[0]
        for name, value in row.items():
            ds = rounds[name]
            ds.resize((n + 1,))
            ds[n] = value
        self.f.flush()

    def write_model(self, state: dict[str, np.ndarray]) -> None:
        g = self.f.require_group("model")
        for name, value in state.items():
            if name in g:
                del g[name]
            g.create_dataset(name, data=value)

    def close(self, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if not self.f.id.valid:
            return
        self.f.attrs["status"] = status
        self.f.attrs["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.f.flush()
        self.f.close()


def read(path: str | os.PathLike) -> dict:
    """The whole result file as plain Python/NumPy values (no pickle anywhere)."""
    try:
        f = h5py.File(path, "r", locking=False)  # readable while a run (or its corpse) holds it
    except OSError as exc:
        raise UsageError(f"cannot open result file {str(path)!r}: {exc}") from None
    with f:
        if f.attrs.get("schema") != SCHEMA:
            raise UsageError(f"{str(path)!r} is not an ssfl-mpi result file (schema "
                             f"{f.attrs.get('schema')!r}, expected {SCHEMA!r})")
        out = {"attrs": {k: _plain(v) for k, v in f.attrs.items()},
               "rounds": {k: f["rounds"][k][()] for k in f["rounds"]}}
        out["config"] = json.loads(out["attrs"]["config"])
        for group in ("mask", "partition", "model"):
            if group in f:
                out[group] = {k: f[group][k][()] for k in f[group]}
        return out


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_bench(path: str | os.PathLike, rows: list[dict], samples: list[np.ndarray], *,
                overwrite: bool, attrs: dict) -> None:
    """Benchmark rows as columns under /bench, every timed sample under /bench/samples_s."""
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = SCHEMA
        f.attrs["status"] = "complete"
        f.attrs["host"] = socket.gethostname()
        f.attrs["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for key, value in {**{f"version_{k}": str(v) for k, v in _versions().items()}, **attrs}.items():
            f.attrs[key] = value
        g = f.create_group("bench")
        for key in rows[0]:
            values = [r[key] for r in rows]
            g.create_dataset(key, data=np.array(values, dtype=h5py.string_dtype())
                             if isinstance(values[0], str) else np.array(values))
        g.create_dataset("samples_s", data=np.stack(samples))
