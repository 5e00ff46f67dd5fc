"""`table` and `report` average only comparable runs, say what they left out and why, never crash."""

import h5py
import pytest

from ssfl_mpi.compare import select
from ssfl_mpi.config import Config
from ssfl_mpi.errors import UsageError
from ssfl_mpi.report import report
from ssfl_mpi.results import ROUND_FIELDS, ResultWriter
from ssfl_mpi.table import markdown


def result(path, *, status="complete", rows=None, drop=(), **cfg_values):
    cfg = Config(**{"rounds": 4, **cfg_values})
    n = cfg.rounds if rows is None else rows
    w = ResultWriter(path, overwrite=True, attrs={"method": cfg.method, "sparsity": cfg.sparsity,
                                                  "seed": cfg.seed, "config": cfg.to_json(),
                                                  "clients_per_round": cfg.clients_per_round})
    for r in range(1, n + 1):
        row = {k: 0 for k in ROUND_FIELDS}
        row.update(round=r, test_accuracy=0.5 + 0.1 * cfg.seed + 0.01 * r, client_accuracy=0.4,
                   personal_accuracy=0.4, bytes_up=100, bytes_down=100, time_round=1.0)
        w.append_round(row)
    for name in drop:
        del w.f["rounds"][name]
    w.close(status)
    return str(path)


def test_runs_share_a_cell_only_when_all_settings_but_the_seed_agree(tmp_path):
    files = [result(tmp_path / f"s{seed}.h5", seed=seed) for seed in range(3)]
    files.append(result(tmp_path / "lr.h5", seed=0, lr=0.05))
    files.append(result(tmp_path / "long.h5", seed=0, rounds=6))
    sel = select(files)
    sizes = {label: len(group) for (label, _), group in sel.cells.items()}
    assert sorted(sizes.values()) == [1, 1, 3] and not sel.left_out
    assert any("lr=0.05" in label for label in sizes) and any("rounds=6" in label for label in sizes)
    text = markdown(sel)
    assert "n=3" in text and "n=1" in text


def test_what_is_left_out_is_listed_with_its_reason(tmp_path):
    files = [result(tmp_path / "a.h5", seed=0), result(tmp_path / "dup.h5", seed=0),
             result(tmp_path / "running.h5", seed=1, status="interrupted", rows=2),
             result(tmp_path / "short.h5", seed=2, rows=3),
             result(tmp_path / "old.h5", seed=3, drop=("client_accuracy",))]
    sel = select(files, "client")
    reasons = dict(sel.left_out)
    assert "same settings and seed 0" in reasons[files[1]]
    assert reasons[files[2]] == "status interrupted, 2 rounds"
    assert "marked complete with 3 of 4 rounds" in reasons[files[3]]
    assert "no client_accuracy column" in reasons[files[4]]
    assert [len(g) for g in sel.cells.values()] == [1]
    assert "Left out:" in markdown(sel, metric="client")
    # the acc metric still takes the old file
    assert files[4] not in dict(select(files, "acc").left_out)


def test_report_on_mixed_inputs_writes_everything_without_crashing(tmp_path):
    files = [result(tmp_path / f"s{seed}.h5", seed=seed) for seed in range(2)]
    files.append(result(tmp_path / "long.h5", seed=0, rounds=7))
    files.append(result(tmp_path / "cut.h5", seed=5, status="running", rows=1))
    out = report(files, out=str(tmp_path / "rep"), target=0.55, networks=["wan"], plots=True)
    text = out.read_text()
    assert "cut.h5" in text and "status running" in text
    assert (tmp_path / "rep" / "accuracy_vs_round.png").exists()


def test_damaged_rows_are_a_one_line_error_naming_the_file(tmp_path):
    path = result(tmp_path / "bad.h5", seed=0)
    with h5py.File(path, "a") as f:
        ds = f["rounds"]["bytes_up"]
        ds.resize((2,))
    with pytest.raises(UsageError, match=r"bad.h5.*bytes_up has 2 entries"):
        select([path])
    path2 = result(tmp_path / "bad2.h5", seed=0)
    with h5py.File(path2, "a") as f:
        f["rounds"]["round"][1] = 7
    with pytest.raises(UsageError, match=r"bad2.h5.*not 1..4"):
        select([path2])
