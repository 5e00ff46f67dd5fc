"""A resume (and read, table, report) never trusts a companion file it cannot prove is the run's own.

A run killed with SIGKILL after round 3 of 6 leaves `x.h5` and its companion `x.h5.static`. Each
fault below is applied to a copy of that pair; `--resume` on 3 ranks must end with exit 2, one line
per rank naming the file and what differs, and both files byte-identical, or (nothing changed)
finish bit-identical to the uninterrupted run without rewriting a committed row.
"""

import hashlib
import os
import re
import shutil

import h5py
import numpy as np
import pytest

from ssfl_mpi.errors import UsageError
from ssfl_mpi.results import Untrusted, attrs_digest, bulk_digests, read

from .launch import launch

SMALL = ["--clients", "8", "--clients-per-round", "4", "--local-epochs", "1", "--threads", "1", "--rounds", "6"]


def _killed(folder, *extra):
    """SIGKILL of rank 0 as round 4 begins: rows 1-3 and the round-3 checkpoint are committed."""
    folder.mkdir()
    proc = launch(3, "run", *SMALL, *extra, "--out", str(folder / "x.h5"), env={"SSFL_MPI_TEST_FAULT": "kill:0:5"},
                  timeout=60)
    assert proc.returncode != 0
    assert (folder / "x.h5.static").exists()
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("companion")
    ref = root / "ref.h5"
    assert launch(3, "run", *SMALL, "--out", str(ref), timeout=60).returncode == 0
    return {"ref": read(ref), "killed": _killed(root / "killed"), "other": _killed(root / "other", "--seed", "5")}


def _copy(runs, tmp_path):
    for name in ("x.h5", "x.h5.static"):
        shutil.copy(runs["killed"] / name, tmp_path / name)
    return tmp_path / "x.h5", tmp_path / "x.h5.static"


def _swap_mask(path):
    with h5py.File(path, "r+") as f:
        m = f["mask/flat"][()]
        on, off = np.flatnonzero(m)[:200], np.flatnonzero(~m)[:200]
        m[on], m[off] = False, True
        f["mask/flat"][...] = m


def _random_bytes(path, where=0.25):
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    data[at:at + 2048] = np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _nan_with_matching_digest(result, static):
    """A NaN in the saliency, with the result file's digest made to match: caught all the same."""
    with h5py.File(static, "r+") as f:
        s = f["saliency/global"][()]
        s[7] = np.nan
        f["saliency/global"][...] = s
    with h5py.File(result, "r+") as f:
        f.attrs["sha256_saliency"] = bulk_digests(f)["saliency"]
        f.attrs["sha256_attrs"] = attrs_digest(f.attrs)


FAULTS = {
    "other-run": (lambda r, s, runs: shutil.copy(runs["other"] / "x.h5.static", s), "belongs to another run"),
    "mask-edited": (lambda r, s, runs: _swap_mask(s), "holds a /mask (in"),
    "random-bytes": (lambda r, s, runs: _random_bytes(s), "differs from the one its run recorded"),
    "truncated": (lambda r, s, runs: s.write_bytes(s.read_bytes()[: s.stat().st_size // 2]),
                  "which is not a readable HDF5 file"),
    "missing": (lambda r, s, runs: s.unlink(), "which is missing"),
    "saliency-nan": (lambda r, s, runs: _nan_with_matching_digest(r, s), "1 NaN/Inf values in /saliency/global"),
    "read-only": (lambda r, s, runs: (os.chmod(r, 0o444), os.chmod(s, 0o444)), "is read-only"),
    # the result file itself: HDF5's chunk checksums, the recorded digests of its attributes
    "result-random-bytes": (lambda r, s, runs: _random_bytes(r, 0.5), "cannot be resumed: it is damaged"),
    "result-config-edited": (lambda r, s, runs: _edit_config(r), "root attributes that are not the ones"),
}


def _edit_config(path):
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = f.attrs["config"].replace('"lr": 0.1', '"lr": 0.7')


def _state(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_wrong_companion_is_refused_with_one_line_and_both_files_untouched(runs, tmp_path, fault):
    change, message = FAULTS[fault]
    result, static = _copy(runs, tmp_path)
    change(result, static, runs)
    before = _state(tmp_path)
    proc = launch(3, "run", "--resume", str(result), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 3 and all(ln.startswith("ssfl-mpi: error: --resume: ") and message in ln
                                   and str(result) in ln for ln in lines), lines
    assert _state(tmp_path) == before  # no lock file left behind either
    if fault == "result-random-bytes":  # damaged, not merely untrusted: read and table refuse it
        with pytest.raises(UsageError, match="is a damaged ssfl-mpi result file"):
            read(result)
    elif fault != "read-only":  # the readers refuse it too; the table leaves it out, saying why
        with pytest.raises(Untrusted, match=re.escape(message)):
            read(result)
        proc = launch(1, "table", str(result), timeout=60)
        assert proc.returncode == 0 and f"- `{result}`: " in proc.stdout and message in proc.stdout
        assert _state(tmp_path) == before


def test_an_untouched_pair_resumes_bit_identical_without_rewriting_committed_rows(runs, tmp_path):
    result, _ = _copy(runs, tmp_path)
    before = read(result)
    assert before["rounds"]["round"].tolist() == [1, 2, 3]
    with h5py.File(result, "r") as f:
        assert f["checkpoint"].attrs["round"] == 3
    proc = launch(3, "run", "--resume", str(result), timeout=60)
    assert proc.returncode == 0, proc.stderr
    after = read(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]  # companion embedded, no lock left
    for key, column in before["rounds"].items():  # committed rows, timings included, stay as they were
        assert np.array_equal(after["rounds"][key][:3], column, equal_nan=True), key
    ref = runs["ref"]
    for key in ref["rounds"]:
        if not (key.startswith("time_") or key.startswith("peak_rss")):
            assert np.array_equal(ref["rounds"][key], after["rounds"][key], equal_nan=True), key
    for name in ref["model"]:
        assert np.array_equal(ref["model"][name], after["model"][name]), name
    assert np.array_equal(ref["mask"]["flat"], after["mask"]["flat"])
    assert np.array_equal(ref["saliency"]["global"], after["saliency"]["global"])
    # the finished file records the digests of what it embeds, and read checks them
    with h5py.File(result, "r") as f:
        assert {f"sha256_{k}": v for k, v in bulk_digests(f).items()} == {
            k: f.attrs[k] for k in ("sha256_mask", "sha256_saliency")}
