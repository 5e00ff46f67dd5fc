"""The HDF5 contract: writer and reader agree, nothing is overwritten silently."""

import h5py
import numpy as np
import pytest

from ssfl_mpi.errors import UsageError
from ssfl_mpi.results import ROUND_FIELDS, SCHEMA, ResultWriter, check_writable, read


def _row(r):
    return {name: r for name in ROUND_FIELDS}


def test_round_trip(tmp_path):
    path = tmp_path / "r.h5"
    w = ResultWriter(path, overwrite=False, attrs={"method": "ssfl", "config": "{\"seed\": 1}"})
    w.write_partition(np.array([3, 4]), np.array([[1, 2], [3, 1]]))
    w.write_mask(np.array([True, False, True, True]), [("a.weight", 4, 3)])
    w.append_round(_row(1))
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
