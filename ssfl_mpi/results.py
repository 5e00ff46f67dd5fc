"""The HDF5 result file: schema, writer (rank 0 only) and reader."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from .errors import UsageError, WriteFailed

# 5: local_accuracy; run_id and sha256_<group> of the bulk groups (checked by read and --resume); 4:
# time_compute_mean/pack/wait/aggregate/commit, startup_s, setup_s; 3: density_up/down,
# /checkpoint/clients; 2: client_accuracy, time_eval, /saliency
SCHEMA = "ssfl-mpi/5"
READABLE_SCHEMAS = ("ssfl-mpi/1", "ssfl-mpi/2", "ssfl-mpi/3", "ssfl-mpi/4", SCHEMA)  # read and tabulated; only SCHEMA files can be resumed
STATUSES = ("running", "complete", "interrupted", "failed")

# /rounds/<name>: one entry per completed round. Units are in the names' documentation below.
ROUND_FIELDS = {
    "round": np.int64,            # 1-based round number
    "test_accuracy": np.float64,  # global model on the global test set, in [0, 1] (the paper's
                                  # accuracy: the SSFL code pools all clients' test splits, which are
                                  # the whole test set once); NaN if not evaluated
    "client_accuracy": np.float64,  # unweighted mean over clients of the global model's accuracy on
                                  # each client's own test split (a per-client view, not the
                                  # paper's number); NaN if not evaluated
    "personal_accuracy": np.float64,  # the same with each client's own model (DisPFL: its own weights;
                                  # LotteryFL, client-wise masks: the global one inside its own mask):
                                  # equal to client_accuracy where all share one model
    "local_accuracy": np.float64,  # each client's last local model (what it sent up the last time it
                                  # trained) on its own test split, unweighted mean over the clients
                                  # that have trained: the SSFL code's "personal" accuracy; static-mask
                                  # methods (NaN for the others, and when not evaluated)
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
                                  # (DisPFL: the clients' masks, summed over the round's clients)
    "density_up": np.float64,     # mean over the round's uplink messages of the fraction of prunable
                                  # weights whose values travel (Top-K: of all values)
    "density_down": np.float64,   # the same for the downlink (SparsyFed: the global model's nonzeros)
    "clients_skipped": np.int64,  # updates left out for NaN/Inf (--on-nonfinite skip)
    "peak_rss_server_mb": np.float64,   # peak resident memory of rank 0 so far, MiB
    "peak_rss_workers_mb": np.float64,  # the largest peak resident memory of the worker ranks, MiB
    "time_compute": np.float64,   # seconds of local training, max over worker ranks
    "time_compute_mean": np.float64,  # mean over training ranks of their local training seconds
                                  # (time_compute / time_compute_mean: the round's imbalance)
    "time_pack": np.float64,      # seconds packing/unpacking (static masks) or encoding/decoding
                                  # (messages) the rank's clients' models, max over training ranks
    "time_wait": np.float64,      # seconds inside round-protocol MPI calls, mean over worker ranks:
                                  # mostly waiting for the server and the slowest worker
    "time_comm": np.float64,      # seconds inside round-protocol MPI calls (waits included), max over workers
    "time_round": np.float64,     # server wall seconds from the round's broadcast to its aggregate
    "time_eval": np.float64,      # server seconds evaluating this round's model (0 when not evaluated);
                                  # overlaps the next round's training, not part of time_round
    "time_aggregate": np.float64,  # server seconds from the last update received to the new global
                                  # model (checks, decoding, aggregation)
    "time_commit": np.float64,    # server seconds committing the previous round's row and checkpoint,
                                  # made while this round's clients trained (0 in a run's first round)
}


def _versions() -> dict:
    import mpi4py
    import torch
    from . import __version__
    return {"ssfl_mpi": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "mpi4py": mpi4py.__version__}


def check_writable(path: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse before any training: an existing result is never overwritten silently."""
    if path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a directory: name a file, e.g. {str(path / 'run.h5')!r}")
    if path.exists() and not overwrite:
        raise UsageError(f"result file {str(path)!r} exists: choose another {flag} or pass --overwrite")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create directory {str(parent)!r} for {flag}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"directory {str(parent)!r} of {flag} is not writable")


_LOCKS: dict = {}  # resolved path -> open lock file of this process


def _lock_path(path: Path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.lock")


def claim(path: Path) -> None:
    """Make this process the only writer of `path` until `release` (or its exit, even by SIGKILL):
    an exclusive flock on a hidden `.NAME.lock` beside it. A second run, a --resume of a file that
    a live run writes, or a benchmark aimed at it is refused with one line. The lock file is
    removed on release (a SIGKILL leaves it, harmless: an unlocked lock file is taken over)."""
    key = str(Path(path).resolve())
    if key in _LOCKS:
        return
    lock = _lock_path(path)
    while True:
        try:
            fh = open(lock, "a+")
        except OSError as exc:
            raise UsageError(f"cannot create the lock file {str(lock)!r}: {exc.strerror}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UsageError(f"{str(path)!r} is being written by another run ({holder}); wait for it or "
                             f"choose another --out") from None
        try:  # a releasing holder may have removed the file we opened: lock the one at the path
            if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
    fh.flush()
    _LOCKS[key] = (fh, lock)


def release(path: Path) -> None:
    held = _LOCKS.pop(str(Path(path).resolve()), None)
    if held is not None:
        fh, lock = held
        try:
            lock.unlink(missing_ok=True)  # while still locked: no one else can hold it at this moment
        except OSError:
            pass
        fh.close()


def release_all() -> None:
    """Every lock this process holds (a run refused after its claim, any exit of `main`)."""
    for key in list(_LOCKS):
        release(Path(key))


# Groups written once (or rarely) that would dominate a round's commit at ResNet-18 size (the
# saliency is as large as the model): while a run goes on they live in a companion file NAME.static
# that the result file reaches through HDF5 external links; the last commit embeds them again.
BULK = ("saliency", "mask")


def companion(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".static")


def bulk_digests(f: h5py.File) -> dict[str, str]:
    """sha256 of each bulk group's content (every attribute and dataset: name, dtype, shape,
    values), in a fixed order: the same whether the group is embedded or reached through a link,
    however HDF5 laid it out on disk. Recorded at every commit as the attribute sha256_<group>."""
    out = {}
    for name in BULK:
        if name in f:
            h = hashlib.sha256()
            _digest_into(h, f[name], "/" + name)
            out[name] = h.hexdigest()
    return out


def _digest_into(h, obj, path: str) -> None:
    for key in sorted(obj.attrs):
        h.update(f"@{path}/{key}={_plain(obj.attrs[key])!r};".encode())
    if isinstance(obj, h5py.Dataset):
        value = obj[()]
        h.update(f"{path}:{obj.dtype.str}:{obj.shape};".encode())
        h.update(np.ascontiguousarray(value).tobytes() if obj.dtype.kind in "biuf" else repr(value.tolist()).encode())
        return
    for key in sorted(obj):
        _digest_into(h, obj[key], f"{path}/{key}")


class ResultWriter:
    """Owned by rank 0. The file lives in memory and every commit replaces the file on disk
    atomically (write a temporary file, fsync, rename): a run killed at any moment, even with
    SIGKILL in the middle of a write, leaves the last committed file, complete and readable,
    holding every round committed before the kill.

    A round's commit writes what changes: attributes, rows and checkpoint. The bulk groups (BULK)
    are written to the companion file when they change (setup, resume) and are external links in
    the result file until the last commit (`close`) embeds them and removes the companion. The
    checkpoint's mask is a link to /mask/flat while the two are equal.
    """

    def __init__(self, path: Path, *, overwrite: bool, attrs: dict):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise UsageError(f"result file {str(self.path)!r} exists: choose another --out or pass --overwrite")
        self.failed = False
        self.bytes_written = self.commits = 0  # by this process's commits
        self.bulk_dirty, self.mask_flat = False, None
        self.checkpointed = False  # whether a commit holding a checkpoint reached the disk
        self._writer, self._pending = None, None
        companion(self.path).unlink(missing_ok=True)  # of an overwritten run killed before its end
        self.f = h5py.File(f"mem-{id(self)}", "w", driver="core", backing_store=False)
        a = self.f.attrs
        a["schema"] = SCHEMA
        a["status"] = "running"
        a["run_id"] = uuid.uuid4().hex  # ties the companion to this run
        a["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        a["host"] = socket.gethostname()
        for key, value in _versions().items():
            a[f"version_{key}"] = str(value)
        for key, value in attrs.items():
            a[key] = value
        rounds = self.f.create_group("rounds")
        for name, dtype in ROUND_FIELDS.items():
            rounds.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(256,), fletcher32=True)
        self.commit()

    @classmethod
    def reopen(cls, path: Path, *, keep_rounds: int) -> "ResultWriter":
        """Continue a file: its rounds after `keep_rounds` (those past the checkpoint) are dropped."""
        self = cls.__new__(cls)
        self.failed = False
        self.bytes_written = self.commits = 0
        self.checkpointed = True  # --resume reads only files with a checkpoint
        self._writer, self._pending = None, None
        self.path = Path(path)
        self.f = h5py.File(f"mem-{id(self)}", "w", driver="core", backing_store=False)
        with h5py.File(self.path, "r", locking=False) as src:  # external links to the companion resolve
            for key, value in src.attrs.items():
                self.f.attrs[key] = value
            for name in src:
                src.copy(src[name], self.f, name=name)
            # The companion (checked by read_checkpoint) stays as it is; embedded groups (a run that
            # ended interrupted or failed) go back to it at the next commit.
            linked = {name for name in BULK if isinstance(src.get(name, getlink=True), h5py.ExternalLink)}
        for name in self.f["rounds"]:
            ds = self.f["rounds"][name]
            ds.resize((max(0, min(keep_rounds, ds.shape[0])),))
        self.f.attrs["status"] = "running"
        self.f.attrs["resumed"] = int(self.f.attrs.get("resumed", 0)) + 1
        if "model" in self.f:
            del self.f["model"]
        self.bulk_dirty = any(name in self.f and name not in linked for name in BULK)
        self.mask_flat = self.f["mask"]["flat"][()] if "mask" in self.f else None
        self.commit()
        return self

    def commit(self, *, final: bool = False) -> None:
        """Replace the file on disk with the in-memory one, atomically (the companion first, when its
        groups changed). The images are taken here; writing them (write, fsync, rename: mostly
        waiting for the disk) happens on a writer thread while the caller goes on, one commit
        at a time, in order; the last commit (final) is waited for. On failure (disk full, I/O
        error) the temporary file is removed, the files on disk stay the last commit, and nothing
        is committed any more: the run ends with WriteFailed (exit 4) at its next commit and can be
        resumed. final: embed the bulk groups, drop the companion."""
        if self.failed:
            return
        self._settle()
        split = not final and any(name in self.f for name in BULK)
        writes = []
        if self.bulk_dirty:
            for name, digest in bulk_digests(self.f).items():
                self.f.attrs[f"sha256_{name}"] = digest
            if split:
                writes.append((companion(self.path), self._image(bulk=True)))
            self.bulk_dirty = False
        self.f.attrs["sha256_attrs"] = attrs_digest(self.f.attrs)
        self.f.flush()  # after the last change: the image is of what is flushed
        writes.append((self.path, self._image(bulk=False) if split else self.f.id.get_file_image()))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssfl-commit")
        self._pending = self._writer.submit(self._write, writes, final, "checkpoint" in self.f)
        if final:
            self._settle()

    def _write(self, writes: list, final: bool, checkpoint: bool) -> None:
        for path, image in writes:
            self._replace(path, image)
        self.commits += 1
        self.checkpointed = self.checkpointed or checkpoint
        if final:
            companion(self.path).unlink(missing_ok=True)

    def settle(self) -> None:
        """Wait until the last commit is on disk (readers in the same process, benchmarks)."""
        if not self.failed:
            self._settle()

    def _settle(self) -> None:
        """Wait for the commit in flight; its failure ends the run here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        if self.checkpointed:
            then = "the file holds the last committed state (continue with --resume once there is room)"
        else:
            again = "start it again with --overwrite" if self.path.exists() else "start it again"
            then = f"no checkpoint was committed yet (nothing to resume): {again} once there is room"
        raise WriteFailed(f"cannot write result file {str(self.path)!r}: {exc.strerror or exc}; {then}") from None

    def _replace(self, path: Path, image: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(image)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise
        self.bytes_written += len(image)

    def _image(self, *, bulk: bool) -> bytes:
        """The companion's image (the bulk groups) or the result file's without them (links instead)."""
        out = h5py.File(f"mem-part-{id(self)}", "w", driver="core", backing_store=False)
        try:
            if not bulk:
                for key, value in self.f.attrs.items():
                    out.attrs[key] = value
            else:  # whose companion it is
                out.attrs["run_id"] = self.f.attrs["run_id"]
                out.attrs["companion_of"] = self.path.name
            for name in self.f:
                if (name in BULK) != bulk:
                    if not bulk:
                        out[name] = h5py.ExternalLink(companion(self.path).name, f"/{name}")
                else:
                    self.f.copy(self.f[name], out, name=name)
            out.flush()
            return out.id.get_file_image()
        finally:
            out.close()

    @property
    def n_rounds(self) -> int:
        return int(self.f["rounds"]["round"].shape[0])

    def set_attrs(self, **attrs) -> None:
        for key, value in attrs.items():
            self.f.attrs[key] = value

    def write_partition(self, sizes: np.ndarray, label_counts: np.ndarray) -> None:
        if "partition" in self.f:
            return
        g = self.f.create_group("partition")
        for name, a in (("client_sizes", sizes), ("label_counts", label_counts)):
            a = np.asarray(a, dtype=np.int64)
            g.create_dataset(name, data=a, **_checked(a))

    def write_mask(self, kept: np.ndarray, layers: list[tuple[str, int, int]]) -> None:
        """The mask; written again at the end for methods whose mask changes (the final one)."""
        if "mask" in self.f and self.mask_flat is not None and np.array_equal(kept, self.mask_flat):
            return
        ck = self.f.get("checkpoint")
        if ck is not None and isinstance(ck.get("kept", getlink=True), h5py.SoftLink):
            old = ck["kept"][()]  # the checkpoint's mask was this one: keep it as its own copy
            del ck["kept"]
            ck.create_dataset("kept", data=old, compression="gzip", shuffle=True, **_checked(old))
        if "mask" in self.f:
            del self.f["mask"]
        g = self.f.create_group("mask")
        g.create_dataset("flat", data=np.asarray(kept, dtype=bool), compression="gzip", shuffle=True)
        dtype = np.dtype([("name", h5py.string_dtype()), ("size", np.int64), ("kept", np.int64),
                          ("density", np.float64)])
        rows = np.array([(n, s, k, k / s) for n, s, k in layers], dtype=dtype)
        g.create_dataset("layers", data=rows)
        self.mask_flat = np.asarray(kept, dtype=bool).copy()
        self.bulk_dirty = True

    def append_round(self, row: dict, *, whole: bool = False) -> None:
        """One round's row, committed (whole: the whole file, bulk groups included; `bench commit`'s
        baseline)."""
        if set(row) != set(ROUND_FIELDS):
            raise ValueError(f"round row fields {sorted(row)} != schema {sorted(ROUND_FIELDS)}")
        rounds = self.f["rounds"]
        n = rounds["round"].shape[0]
        for name, value in row.items():
            ds = rounds[name]
            ds.resize((n + 1,))
            ds[n] = value
        self.commit(final=whole)

    def write_checkpoint(self, row: dict, *, vector: np.ndarray, kept: np.ndarray,
                         clients: dict[str, np.ndarray] | None = None, commit: bool = True) -> None:
        """The state after round row["round"], committed as soon as the round is aggregated.

        With it goes that round's row as far as it is known before evaluation, so that a resumed
        run can evaluate the checkpointed model and write the row a kill may have cut off. Besides
        it, only the per-client state the server keeps (`clients`, [K, n] arrays under
        /checkpoint/clients) is needed: every random stream derives from (seed, purpose, client,
        round).
        """
        if "checkpoint" in self.f:
            del self.f["checkpoint"]
        g = self.f.create_group("checkpoint")
        g.attrs["round"] = int(row["round"])
        g.attrs["row"] = json.dumps({k: _plain(v) for k, v in row.items()})
        g.attrs["sha256"] = _resume_digest(self.f.attrs.get("config", ""), g.attrs["round"], g.attrs["row"])
        vector = np.asarray(vector, dtype=np.float32)
        g.create_dataset("vector", data=vector, **_checked(vector))
        kept = np.asarray(kept, dtype=bool)
        if self.mask_flat is not None and np.array_equal(kept, self.mask_flat):
            g["kept"] = h5py.SoftLink("/mask/flat")  # a static mask is stored once
        else:
            g.create_dataset("kept", data=kept, compression="gzip", shuffle=True, **_checked(kept))
        if clients:
            c = g.create_group("clients")
            for name, a in clients.items():
                c.create_dataset(name, data=a, **_checked(a),
                                 **({"compression": "gzip", "shuffle": True} if a.dtype == bool else {}))
        if commit:
            self.commit()

    def write_saliency(self, scores: np.ndarray, attrs: dict) -> None:
        """The aggregated global score the mask was chosen from (float32, one per prunable weight)."""
        if "saliency" in self.f:
            del self.f["saliency"]
        g = self.f.create_group("saliency")
        g.create_dataset("global", data=np.asarray(scores, dtype=np.float32))
        for key, value in attrs.items():
            g.attrs[key] = value
        self.bulk_dirty = True
        self.commit()

    def write_model(self, state: dict[str, np.ndarray]) -> None:
        g = self.f.require_group("model")
        for name, value in state.items():
            if name in g:
                del g[name]
            g.create_dataset(name, data=value, **_checked(np.asarray(value)))

    def close(self, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if not self.f.id.valid:
            return
        try:
            if not self.failed:
                try:
                    self._settle()
                except WriteFailed:
                    if status != "failed":  # a failed run already has an error to report
                        raise
            self.f.attrs["status"] = status
            self.f.attrs["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            # Of this process (a resumed run counts from its resume), before this last commit.
            self.f.attrs["disk_bytes_written"] = self.bytes_written
            self.f.attrs["commits"] = self.commits
            self.commit(final=True)
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
            self.f.close()
            release(self.path)


def _checked(a: np.ndarray) -> dict:
    """HDF5's own per-chunk checksum (Fletcher-32): a flipped byte in the data is a read error, never
    a wrong number (scalars and empty arrays cannot be chunked, so go without)."""
    return {"fletcher32": True} if a.ndim and a.size else {}


def attrs_digest(attrs) -> str:
    """Of the root attributes (all but this one): HDF5 checksums data chunks, not attributes."""
    h = hashlib.sha256()
    for key in sorted(k for k in attrs if k != "sha256_attrs"):
        h.update(f"{key}={_plain(attrs[key])!r};".encode())
    return h.hexdigest()


def _resume_digest(config, round_, row) -> str:
    """Of the attributes a resume continues from (HDF5 checksums data chunks, not attributes)."""
    return hashlib.sha256(f"{_plain(config)}\n{int(round_)}\n{_plain(row)}".encode()).hexdigest()


class Untrusted(UsageError):
    """A result file whose bulk groups (mask, saliency) or root attributes are not the ones its run
    recorded, or whose companion is missing or another run's."""


def check_trusted(f: h5py.File, path: str, what: str = "") -> None:
    """The bulk groups and root attributes are the run's own, as recorded at its last commit.

    A killed run's file reaches them in its companion NAME.static: the companion must exist, name
    the same run (run_id) and hold, group by group, the content whose sha256 the file recorded.
    Files of schema 5 are checked; older ones recorded nothing to check against."""
    def untrusted(defect: str) -> Untrusted:
        return Untrusted(f"{what}{path!r} {defect}")

    run_id = _plain(f.attrs.get("run_id"))
    links = {name: f.get(name, getlink=True) for name in BULK}
    links = {name: link for name, link in links.items() if isinstance(link, h5py.ExternalLink)}
    for name, link in links.items():
        other = Path(path).parent / link.filename
        if not other.exists():
            raise untrusted(f"keeps its /{name} in {str(other)!r} (the companion of a run that has not "
                            f"finished), which is missing: copy it beside the file")
        try:
            with h5py.File(other, "r", locking=False) as c:
                theirs = _plain(c.attrs.get("run_id"))
        except OSError as exc:
            raise untrusted(f"keeps its /{name} in {str(other)!r}, which is not a readable HDF5 file "
                            f"({_one_line(exc)})") from None
        if run_id is not None and theirs != run_id:
            raise untrusted(f"keeps its /{name} in {str(other)!r}, which belongs to another run (run id "
                            f"{theirs!r}, this file's {run_id!r}): put the companion written with this "
                            f"file beside it")
    if _plain(f.attrs.get("schema")) != SCHEMA:
        return
    if _plain(f.attrs.get("sha256_attrs")) != attrs_digest(f.attrs):
        raise untrusted("has root attributes that are not the ones its run recorded (their sha256 differs)")
    try:
        found = bulk_digests(f)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        where = f" in {str(Path(path).parent / next(iter(links.values())).filename)!r}" if links else ""
        raise untrusted(f"holds bulk groups{where} that cannot be read ({_one_line(exc)})") from None
    for name, digest in found.items():
        where = f" (in {str(Path(path).parent / links[name].filename)!r})" if name in links else ""
        recorded = _plain(f.attrs.get(f"sha256_{name}"))
        if recorded is None:
            raise untrusted(f"records no digest of its /{name}{where}: it cannot be checked")
        if digest != recorded:
            raise untrusted(f"holds a /{name}{where} that differs from the one its run recorded (sha256 "
                            f"{digest[:12]}... instead of {recorded[:12]}...)")
    if "saliency" in found:
        scores = f["saliency"]["global"][()]
        if not np.isfinite(scores).all():
            raise untrusted(f"holds {int((~np.isfinite(scores)).sum())} NaN/Inf values in /saliency/global")


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno:  # HDF5's text around an errno is a paragraph
        return os.strerror(exc.errno)
    return " ".join(str(exc).split())


# The row a checkpoint carries: everything known before evaluation.
CHECKPOINT_ROW_FIELDS = set(ROUND_FIELDS) - {"test_accuracy", "test_loss", "client_accuracy",
                                             "personal_accuracy", "local_accuracy", "time_eval"}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """config (dict), status, round, vector, kept, row of a result file to resume.

    Everything is validated here, before any rank builds anything and long before the file is
    rewritten: a damaged file is a one-line usage error that names the defect, and stays as it was.
    """
    path = str(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise UsageError(f"--resume: no such file {path!r}") from None
    except OSError as exc:
        raise UsageError(f"--resume: {path!r} is not a readable HDF5 file ({exc}); start a new run "
                         f"with --out") from None

    def bad(defect: str) -> UsageError:
        return UsageError(f"--resume: {path!r} cannot be resumed: {defect}")

    with f:
        try:
            out = _read_checkpoint(f, path, bad)
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # HDF5's checksums, structure
            raise bad(f"it is damaged ({_one_line(exc)})") from None
    for p in out.pop("rewritten"):  # mode bits too: root may write anything, but a read-only file says "keep"
        if not os.stat(p).st_mode & stat.S_IWUSR or not os.access(p, os.W_OK):
            raise bad(f"{str(p)!r} is read-only and a resume rewrites it: make it writable (chmod u+w) "
                      f"or resume a copy")
    return out


def _touch(name: str, obj) -> None:
    for key in obj.attrs:
        obj.attrs[key]
    if isinstance(obj, h5py.Dataset):
        obj[()]


def _read_checkpoint(f: h5py.File, path: str, bad) -> dict:
    if f.attrs.get("schema") != SCHEMA or "config" not in f.attrs:
        raise UsageError(f"--resume: {path!r} is not an ssfl-mpi result file of schema {SCHEMA!r} "
                         f"(schema {_plain(f.attrs.get('schema'))!r}); resume it with the version "
                         f"that wrote it")
    status = _plain(f.attrs.get("status"))
    if status not in STATUSES:
        raise bad(f"unknown status {status!r}")
    try:
        config = json.loads(_plain(f.attrs["config"]))
    except (ValueError, TypeError):
        raise bad("its stored config is not JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("rounds"), int):
        raise bad("its stored config has no round count")
    if "checkpoint" not in f:
        raise bad("it holds no checkpoint (it was stopped before the setup finished); start it again "
                  "with --overwrite")
    check_trusted(f, path, "--resume: ")
    g = f["checkpoint"]
    try:
        round_ = int(g.attrs["round"])
        row = json.loads(_plain(g.attrs["row"]))
        vector, kept = g["vector"][()], g["kept"][()]
        clients = {name: ds[()] for name, ds in g["clients"].items()} if "clients" in g else {}
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise bad(f"its checkpoint is incomplete or unreadable ({_one_line(exc)})") from None
    if not 0 <= round_ <= config["rounds"]:
        raise bad(f"its checkpoint is of round {round_}, outside 0..{config['rounds']}")
    if not isinstance(row, dict) or row.get("round") != round_ or (
            round_ > 0 and not CHECKPOINT_ROW_FIELDS <= set(row)):
        raise bad(f"the row stored with its checkpoint does not belong to round {round_}")
    if vector.ndim != 1 or vector.dtype != np.float32 or kept.ndim != 1 or kept.dtype != bool:
        raise bad(f"its checkpoint holds a {vector.dtype} vector of shape {vector.shape} and a "
                  f"{kept.dtype} mask of shape {kept.shape} (expected 1-D float32 and bool)")
    if not np.isfinite(vector).all():
        raise bad(f"its checkpoint vector holds {int((~np.isfinite(vector)).sum())} NaN/Inf values")
    if "rounds" not in f or "round" not in f["rounds"]:
        raise bad("it has no /rounds")
    done = f["rounds"]["round"][()]
    if not np.array_equal(done, np.arange(1, len(done) + 1)):
        raise bad("its /rounds/round is not 1, 2, ...")
    if len(done) < round_ - 1:
        raise bad(f"its checkpoint is of round {round_} but it holds only {len(done)} rows")
    lengths = {name: f["rounds"][name].shape[0] for name in f["rounds"]}
    if set(lengths) != set(ROUND_FIELDS) or len(set(lengths.values())) != 1:
        raise bad("its /rounds columns are missing or of unequal length")
    f.visititems(_touch)  # everything a resume copies reads (chunk checksums, group structure)
    if _plain(g.attrs.get("sha256")) != _resume_digest(f.attrs["config"], g.attrs["round"], g.attrs["row"]):
        raise bad("its stored config, checkpoint round or checkpoint row is not what the run recorded "
                  "(their sha256 differs)")
    rewritten = [Path(path)] + [companion(Path(path))] * any(
        isinstance(f.get(name, getlink=True), h5py.ExternalLink) for name in BULK)
    return {"config": config, "status": status, "round": round_, "row": row, "vector": vector,
            "kept": kept, "clients": clients, "rows": len(done), "rewritten": rewritten}


def read(path: str | os.PathLike) -> dict:
    """The whole result file as plain Python/NumPy values (no pickle anywhere)."""
    try:
        f = h5py.File(path, "r", locking=False)  # readable while a run (or its corpse) holds it
    except OSError as exc:
        raise UsageError(f"cannot open result file {str(path)!r}: {exc}") from None
    with f:
        try:
            return _read(f, str(path))
        except (KeyError, ValueError, TypeError, OSError, RuntimeError, AttributeError) as exc:
            raise UsageError(f"{str(path)!r} is a damaged ssfl-mpi result file ({type(exc).__name__}: "
                             f"{_one_line(exc)})") from None


def _read(f: h5py.File, path: str) -> dict:
    if _plain(f.attrs.get("schema")) not in READABLE_SCHEMAS:
        raise UsageError(f"{path!r} is not an ssfl-mpi result file (schema "
                         f"{_plain(f.attrs.get('schema'))!r}, expected {SCHEMA!r})")
    if "bench" in f:
        raise UsageError(f"{path!r} is a benchmark file, not a run's result file")
    check_trusted(f, path)
    out = {"attrs": {k: _plain(v) for k, v in f.attrs.items()},
           "rounds": {k: f["rounds"][k][()] for k in f["rounds"]}}
    config = json.loads(out["attrs"]["config"])
    if not isinstance(config, dict):
        raise ValueError("config is not a JSON object")
    out["config"] = config
    out["attrs"]["status"]  # noqa: B018 - presence check
    for group in ("mask", "partition", "model", "checkpoint", "saliency"):
        if group in f:
            out[group] = _arrays(f[group])
    return out


def _arrays(group: h5py.Group) -> dict:
    """A group's datasets as arrays, its subgroups as nested dicts."""
    return {k: _arrays(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}


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
    claim(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_bench(tmp, rows, samples, attrs)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteFailed(f"cannot write benchmark file {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        release(path)


def _write_bench(path: Path, rows: list[dict], samples: list[np.ndarray], attrs: dict) -> None:
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
        if samples:
            g.create_dataset("samples_s", data=np.stack(samples))
