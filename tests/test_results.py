"""The HDF5 contract: writer and reader agree, nothing is overwritten silently."""

import errno
import os

import h5py
import numpy as np
import pytest

from ssfl_mpi.errors import UsageError, WriteFailed
from ssfl_mpi.results import (ROUND_FIELDS, SCHEMA, ResultWriter, Untrusted, bulk_digests, check_writable, claim,
                              companion, read, read_checkpoint, release, release_all)


def _row(r):
    return {name: r for name in ROUND_FIELDS}


def test_round_trip(tmp_path):
    path = tmp_path / "r.h5"
    w = ResultWriter(path, overwrite=False, attrs={"method": "ssfl", "config": "{\"seed\": 1}"})
    w.write_partition(np.array([3, 4]), np.array([[1, 2], [3, 1]]))
    w.write_mask(np.array([True, False, True, True]), [("a.weight", 4, 3)])
    w.append_round(_row(1))
    w.settle()  # the commit's write runs on a writer thread
    with h5py.File(path, "r") as f:  # readable while running, with the rounds so far
        assert f.attrs["status"] == "running" and f["rounds/round"].shape == (1,)
    w.append_round(_row(2))
    w.write_model({"a.weight": np.arange(4.0).reshape(2, 2)})
    w.close("complete")
    out = read(path)
    assert out["attrs"]["schema"] == SCHEMA and out["attrs"]["status"] == "complete"
    assert out["config"] == {"seed": 1}
    assert out["rounds"]["bytes_up"].tolist() == [1, 2]
    assert out["mask"]["flat"].tolist() == [True, False, True, True]
    assert out["mask"]["layers"]["density"][0] == 0.75
    assert out["partition"]["label_counts"].shape == (2, 2)
    assert out["model"]["a.weight"].shape == (2, 2)
    assert "version_torch" in out["attrs"] and "end_time" in out["attrs"]


def test_rejects_rows_off_schema(tmp_path):
    w = ResultWriter(tmp_path / "r.h5", overwrite=False, attrs={})
    with pytest.raises(ValueError, match="fields"):
        w.append_round({"round": 1})
    w.close("failed")


def test_never_overwrites_silently(tmp_path):
    path = tmp_path / "r.h5"
    path.write_bytes(b"old")
    with pytest.raises(UsageError, match="exists"):
        check_writable(path, overwrite=False)
    with pytest.raises(UsageError):
        ResultWriter(path, overwrite=False, attrs={})
    assert path.read_bytes() == b"old"
    check_writable(path, overwrite=True)


def test_reader_rejects_foreign_and_truncated_files(tmp_path):
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(UsageError, match="not an ssfl-mpi result file"):
        read(foreign)
    junk = tmp_path / "j.h5"
    junk.write_bytes(b"\x89HDF\r\n" + b"0" * 100)
    with pytest.raises(UsageError, match="cannot open"):
        read(junk)


def _setup_writer(path, n=40_000):
    rng = np.random.default_rng(0)
    kept = rng.random(n) < 0.5
    scores = rng.random(n, dtype=np.float32)
    w = ResultWriter(path, overwrite=False, attrs={"config": "{\"seed\": 1, \"rounds\": 5}"})
    w.write_partition(np.array([3, 4]), np.ones((2, 2), np.int64))
    w.write_mask(kept, [("a.weight", n, int(kept.sum()))])
    w.write_saliency(scores, {})
    w.write_checkpoint({"round": 0}, vector=np.zeros(int(kept.sum()), np.float32), kept=kept)
    w.settle()
    return w, kept, scores


def test_a_round_commit_writes_what_changed_and_the_last_one_embeds_the_rest(tmp_path):
    path = tmp_path / "r.h5"
    w, kept, scores = _setup_writer(path, n=400_000)
    vector = np.arange(kept.sum(), dtype=np.float32)
    for r in (1, 2, 3):
        before = w.bytes_written
        w.write_checkpoint({**_row(r), "round": r}, vector=vector, kept=kept, commit=False)
        w.append_round(_row(r))
        w.settle()
        # The checkpoint vector, the rows, attributes and links (about 110 KB of HDF5 structure):
        # not the 1.6 MB saliency or the mask again.
        assert w.bytes_written - before < vector.nbytes + 150_000
    assert companion(path).exists()
    with h5py.File(path, "r") as f:  # as a kill would leave it: links reach the companion
        assert isinstance(f.get("saliency", getlink=True), h5py.ExternalLink)
        assert isinstance(f["checkpoint"].get("kept", getlink=True), h5py.SoftLink)
        assert np.array_equal(f["saliency/global"][()], scores) and f["rounds/round"].shape == (3,)
    ck = read_checkpoint(path)
    assert ck["round"] == 3 and np.array_equal(ck["kept"], kept) and np.array_equal(ck["vector"], vector)
    w.close("interrupted")
    assert not companion(path).exists()
    with h5py.File(path, "r") as f:  # one self-contained file again
        assert isinstance(f.get("saliency", getlink=True), h5py.HardLink)
        assert np.array_equal(f["checkpoint/kept"][()], kept) and np.array_equal(f["mask/flat"][()], kept)
    out = read(path)
    assert np.array_equal(out["saliency"]["global"], scores) and out["rounds"]["round"].tolist() == [1, 2, 3]


def test_a_checkpoint_keeps_its_own_mask_when_the_mask_changes_after_it(tmp_path):
    path = tmp_path / "r.h5"
    w, kept, _ = _setup_writer(path, n=1000)
    w.write_checkpoint({**_row(1), "round": 1}, vector=np.ones(int(kept.sum()), np.float32), kept=kept,
                       commit=False)
    w.append_round(_row(1))
    w.write_mask(~kept, [("a.weight", 1000, int((~kept).sum()))])  # a final mask that differs
    w.close("complete")
    out = read(path)
    assert np.array_equal(out["checkpoint"]["kept"], kept) and np.array_equal(out["mask"]["flat"], ~kept)


def test_resume_of_a_killed_split_file_keeps_its_bulk_groups(tmp_path):
    path = tmp_path / "r.h5"
    w, kept, scores = _setup_writer(path, n=1000)
    w.write_checkpoint({**_row(1), "round": 1}, vector=np.ones(int(kept.sum()), np.float32), kept=kept,
                       commit=False)
    w.append_round(_row(1))
    w.settle()
    w.f.close()  # killed: no last commit; the file links to its companion
    release(path)
    again = ResultWriter.reopen(path, keep_rounds=1)
    again.close("complete")
    out = read(path)
    assert np.array_equal(out["saliency"]["global"], scores) and np.array_equal(out["mask"]["flat"], kept)
    assert not companion(path).exists()


def test_a_killed_file_without_its_companion_is_one_line_naming_it(tmp_path):
    path = tmp_path / "r.h5"
    w, kept, _ = _setup_writer(path, n=1000)
    w.append_round(_row(1))
    w.settle()
    w.f.close()  # killed
    release(path)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "r.h5").write_bytes(path.read_bytes())  # the result file alone
    for reader in (read, read_checkpoint):
        with pytest.raises(UsageError, match=r"keeps its /\w+ in .*r\.h5\.static.*which is missing"):
            reader(moved / "r.h5")
    (moved / "r.h5.static").write_bytes(companion(path).read_bytes())
    assert np.array_equal(read(moved / "r.h5")["mask"]["flat"], kept)


def test_every_commit_records_the_digests_of_the_bulk_groups_and_the_readers_check_them(tmp_path):
    path = tmp_path / "r.h5"
    w, kept, scores = _setup_writer(path, n=1000)
    w.append_round(_row(1))
    w.settle()
    with h5py.File(path, "r") as f:
        assert f.attrs["sha256_mask"] == bulk_digests(f)["mask"]  # read through the external link
        with h5py.File(companion(path), "r") as c:
            assert c.attrs["run_id"] == f.attrs["run_id"] and c.attrs["companion_of"] == "r.h5"
    with h5py.File(companion(path), "r+") as c:  # one weight moved into the mask
        m = c["mask/flat"][()]
        m[np.flatnonzero(~m)[0]] = True
        c["mask/flat"][...] = m
    for reader in (read, read_checkpoint):
        with pytest.raises(Untrusted, match="holds a /mask .* that differs from the one its run recorded"):
            reader(path)
    w.f.close()
    release(path)


def test_a_finished_file_checks_what_it_embeds(tmp_path):
    path = tmp_path / "r.h5"
    w, kept, scores = _setup_writer(path, n=1000)
    w.write_mask(~kept, [("a.weight", 1000, int((~kept).sum()))])  # a final mask, changed at the end
    w.close("complete")
    assert read(path)["attrs"]["sha256_mask"] == bulk_digests(h5py.File(path, "r"))["mask"]
    with h5py.File(path, "r+") as f:
        f["saliency/global"][3] = 0.5
    with pytest.raises(Untrusted, match="holds a /saliency that differs"):
        read(path)


def test_a_lock_file_is_removed_with_its_lock_and_a_stale_one_is_taken_over(tmp_path):
    path = tmp_path / "r.h5"
    lock = tmp_path / ".r.h5.lock"
    lock.write_text("pid 1 on a host that was killed")  # left by a SIGKILL: unlocked
    claim(path)
    assert lock.read_text().startswith(f"pid {os.getpid()} ")
    release_all()
    assert not lock.exists()


def test_a_failed_first_commit_does_not_promise_a_resume(tmp_path, monkeypatch):
    def full(self, path, image):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ResultWriter, "_replace", full)
    w = ResultWriter(tmp_path / "r.h5", overwrite=False, attrs={})
    with pytest.raises(WriteFailed, match=r"no checkpoint was committed yet \(nothing to resume\): start it "
                                          r"again once there is room") as exc:
        w.settle()
    assert "--resume" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["result", "companion"])
def test_no_flipped_bit_in_a_killed_pair_goes_unnoticed(tmp_path, which):
    """Every single-bit flip is refused by the readers or changes nothing they return (free space)."""
    path = tmp_path / "r.h5"
    w, kept, scores = _setup_writer(path, n=3000)
    w.write_checkpoint({**_row(1), "round": 1}, vector=np.arange(int(kept.sum()), dtype=np.float32), kept=kept,
                       commit=False)
    w.append_round(_row(1))
    w.settle()
    w.f.close()  # killed
    release(path)
    target = path if which == "result" else companion(path)
    original, good, ck = target.read_bytes(), read(path), read_checkpoint(path)
    rng = np.random.default_rng(0)
    refused = 0
    for at in rng.integers(0, len(original), 80):
        data = bytearray(original)
        data[at] ^= 1 << int(rng.integers(0, 8))
        target.write_bytes(bytes(data))
        try:
            out, again = read(path), read_checkpoint(path)
        except UsageError:
            refused += 1
            continue
        assert out["attrs"] == good["attrs"] and again["row"] == ck["row"], at
        for group in ("rounds", "mask", "saliency", "partition"):
            for key in good[group]:
                a, b = out[group][key], good[group][key]
                assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (at, group, key)
        assert np.array_equal(again["vector"], ck["vector"]) and np.array_equal(again["kept"], ck["kept"]), at
    assert refused > 25
