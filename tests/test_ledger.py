"""results.tsv: columns, round trip, idempotence, atomic rewrites, the best on a run branch."""
from __future__ import annotations

import subprocess
import threading
from datetime import datetime, timezone

import pytest

from autoresearch.program import Metric
from autoresearch.ledger import (KARPATHY, OURS, LedgerError, LedgerRow, append_rows, begin, columns, current_best,
                                 decided_runs, read_rows)

BR = "autoresearch/20260101-000000"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def row(rid: str, status: str = "keep", value: float | None = 1.5, branch: str = BR, **kw) -> LedgerRow:
    base = dict(commit="abc1234", value=value, status=status, description="an idea", experiment=int(rid),
                run_id=rid, runs=[rid], run_status="ok" if status != "crash" else "oom", phase="tune",
                branch=branch, seeds=[int(rid)], decided_at=T0)
    base.update(kw)
    return LedgerRow(**base)


def test_karpathys_columns_come_first_named_for_the_metric(tmp_path):
    append_rows(tmp_path, [row("0001")], "val_bpb")
    header = (tmp_path / "results.tsv").read_text().splitlines()[0].split("\t")
    assert header[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert header == columns("val_bpb") and header[5:] == OURS and len(KARPATHY) == 5


def test_begin_writes_only_the_header_and_never_over_a_ledger(tmp_path):
    assert begin(tmp_path, "val_bpb") is True
    assert (tmp_path / "results.tsv").read_text() == "\t".join(columns("val_bpb")) + "\n"
    assert read_rows(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["results.tsv"]
    append_rows(tmp_path, [row("0001")], "val_bpb")               # the Stop hook's first row goes under it
    text = (tmp_path / "results.tsv").read_text()
    assert begin(tmp_path, "other") is False and (tmp_path / "results.tsv").read_text() == text
    assert [r.run_id for r in read_rows(tmp_path)] == ["0001"]


def test_begin_never_replaces_a_ledger_written_while_it_ran(tmp_path, monkeypatch):
    import os
    real = os.link

    def first_the_stop_hook(src, dst):                            # a row lands between the check and the link
        append_rows(tmp_path, [row("0001")], "val_bpb")
        return real(src, dst)

    monkeypatch.setattr(os, "link", first_the_stop_hook)
    assert begin(tmp_path, "val_bpb") is False
    assert [r.run_id for r in read_rows(tmp_path)] == ["0001"]
    assert [p.name for p in tmp_path.iterdir()] == ["results.tsv"]


def test_round_trip_keeps_every_field(tmp_path):
    r = row("0003", memory_gb=0.25, delta=-0.01, prev_best=1.51, best=1.5, threshold=0.003, sigma=0.001,
            train_seconds=300.0, sandbox="bwrap", session="abc", note="confirmed (mean of 2)", runs=["0002", "0003"],
            seeds=[2, 3])
    append_rows(tmp_path, [r], "val_bpb")
    [back] = read_rows(tmp_path)
    assert back == r


def test_a_crash_row_has_an_empty_metric_cell_never_zero(tmp_path):
    append_rows(tmp_path, [row("0001"), row("0002", status="crash", value=None)], "val_bpb")
    lines = [ln.split("\t") for ln in (tmp_path / "results.tsv").read_text().splitlines()]
    assert lines[2][1] == "" and lines[2][3] == "crash"
    assert read_rows(tmp_path)[1].value is None


def test_descriptions_cannot_break_the_table(tmp_path):
    append_rows(tmp_path, [row("0001", description="tabs\there\nand\r\nnewlines")], "val_bpb")
    text = (tmp_path / "results.tsv").read_text()
    assert len(text.splitlines()) == 2
    assert read_rows(tmp_path)[0].description == "tabs here and newlines"


def test_append_is_idempotent_by_run_id_and_by_covered_runs(tmp_path):
    assert len(append_rows(tmp_path, [row("0001"), row("0003", runs=["0002", "0003"])], "val_bpb")) == 2
    assert append_rows(tmp_path, [row("0001"), row("0003", runs=["0002", "0003"])], "val_bpb") == []
    assert append_rows(tmp_path, [row("0002")], "val_bpb") == []          # 0002 is decided inside 0003's row
    assert decided_runs(read_rows(tmp_path)) == {"0001", "0002", "0003"}
    assert len(read_rows(tmp_path)) == 2


def test_readers_never_see_a_torn_file_while_rows_are_appended(tmp_path):
    """Every write is a rename of a complete file: a reader at any instant parses cleanly."""
    append_rows(tmp_path, [row("0001")], "val_bpb")
    stop, seen, errors = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            try:
                n = len(read_rows(tmp_path))
                text = (tmp_path / "results.tsv").read_text()
                assert text.endswith("\n")
                seen.append(n)
            except Exception as e:                       # noqa: BLE001 -- any failure is the finding
                errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(2, 120):
        append_rows(tmp_path, [row(f"{i:04d}")], "val_bpb")
    stop.set()
    t.join()
    assert errors == [] and seen and seen == sorted(seen)


def test_a_garbled_ledger_is_a_clear_error_naming_the_line(tmp_path):
    append_rows(tmp_path, [row("0001")], "val_bpb")
    with open(tmp_path / "results.tsv", "a") as f:
        f.write("abc\tnot-a-number\t\tkeep\tx\n")
    with pytest.raises(LedgerError, match="line 3"):
        read_rows(tmp_path)
    (tmp_path / "results.tsv").write_text("garbage\n")
    with pytest.raises(LedgerError, match="line 1"):
        read_rows(tmp_path)


def test_karpathys_own_five_column_file_reads(tmp_path):
    (tmp_path / "results.tsv").write_text(
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
        "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n")
    rows = read_rows(tmp_path)
    assert [(r.commit, r.value, r.status) for r in rows] == [("a1b2c3d", 0.9979, "keep"), ("b2c3d4e", 0.0, "crash")]


def test_current_best_is_per_run_branch_and_respects_direction(tmp_path):
    append_rows(tmp_path, [row("0001", value=2.0), row("0002", value=1.5), row("0003", status="discard", value=1.0),
                           row("0004", status="crash", value=None), row("0005", value=0.5, branch="autoresearch/other")],
                "val_bpb")
    assert current_best(tmp_path, Metric(), branch=BR) == 1.5                 # discards and crashes never count
    assert current_best(tmp_path, Metric(direction="maximize"), branch=BR) == 2.0
    assert current_best(tmp_path, Metric(), branch="autoresearch/none-yet") is None
    assert current_best(tmp_path, Metric(), branch="main") is None           # not a run branch: a baseline comes first


def test_current_best_survives_a_deleted_ledger_through_the_commits(tmp_path):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, env=env, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", BR)
    for i, v in enumerate(("2.000000", "1.750000")):
        run("commit", "-q", "--allow-empty", "-m", f"autoresearch #1: val_bpb {v}\n\nAutoresearch-Value: {v}\n"
            f"Autoresearch-Run: 000{i + 1}\nAutoresearch-Branch: {BR}")
    run("commit", "-q", "--allow-empty", "-m",
        "x\n\nAutoresearch-Value: 0.1\nAutoresearch-Run: 0009\nAutoresearch-Branch: autoresearch/old")
    assert not (tmp_path / "results.tsv").exists()
    assert current_best(tmp_path, Metric()) == 1.75                          # HEAD's branch, from its trailers
