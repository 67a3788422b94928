"""Results the agent cannot forge: metrics.json is signed by the runner with a key kept outside
the project, and a missing, unsigned or hand-edited record is refused by the real Stop hook
(driven through the command line in .claude/settings.json) as a crash, "result record altered"."""
from __future__ import annotations

import json
import os
import stat

import pytest

from autoresearch.record.metrics import KEY_MISSING, RECORD_ALTERED, RunMetrics, key_path, load_verified
from loop_support import Project


@pytest.fixture
def proj(tmp_path) -> Project:
    return Project.create(tmp_path / "proj")


def _edit(proj: Project, rid: str, **changes) -> None:
    p = proj.path / "runs" / rid / "metrics.json"
    raw = json.loads(p.read_text())
    raw.update(changes)
    p.write_text(json.dumps(raw, indent=2) + "\n")


def test_the_key_lives_outside_the_project_with_mode_0600(proj):
    rid = proj.fake_run(value=2.0)
    k = key_path(proj.path)
    assert proj.path not in k.parents and k.is_file()
    assert stat.S_IMODE(k.stat().st_mode) == 0o600 and stat.S_IMODE(k.parent.stat().st_mode) == 0o700
    m, problem = load_verified(proj.path / "runs" / rid)
    assert problem is None and m is not None and m.metric_value == 2.0 and m.signature


@pytest.mark.parametrize("how", ["value", "unsigned", "resigned-garbage", "other-run"])
def test_a_hand_edited_record_is_refused_by_the_stop_hook(proj, how):
    proj.baseline(2.0)
    best_code, head = proj.read(), proj.rev()
    proj.edit("N_HEAD = 4", "N_HEAD = 2")
    rid = proj.fake_run(value=2.5)                 # worse: the agent would like it to look better
    if how == "value":
        _edit(proj, rid, metric_value=0.5)
    elif how == "unsigned":
        _edit(proj, rid, metric_value=0.5, signature=None)
    elif how == "resigned-garbage":
        _edit(proj, rid, metric_value=0.5, signature="0" * 64)
    else:                                          # a genuine signed record copied from the baseline run
        base = proj.path / "runs" / f"{int(rid) - 1:04d}" / "metrics.json"
        (proj.path / "runs" / rid / "metrics.json").write_text(base.read_text())
    r = proj.decide()
    assert r.blocked and "CRASHED" in r.text and RECORD_ALTERED in r.text
    assert proj.read() == best_code and proj.rev() == head
    row = proj.rows()[-1]
    assert (row.status, row.value) == ("crash", None) and RECORD_ALTERED in row.note


def test_an_unaltered_record_is_still_kept(proj):
    """The differential half: the same flow with the record untouched keeps the better run."""
    proj.baseline(2.0)
    proj.edit("N_HEAD = 4", "N_HEAD = 2")
    proj.fake_run(value=1.0)
    r = proj.decide()
    assert proj.rows()[-1].status == "keep", r.text


def test_the_host_recheck_refuses_a_signed_value_past_the_floor_or_short_of_bytes(tmp_path):
    run = tmp_path / "p" / "runs" / "0001"
    run.mkdir(parents=True)
    from datetime import datetime, timezone
    base = dict(run_id="0001", status="ok", metric_name="val_bpb", direction="minimize", train_py_sha256="x",
                seed=1, budget_seconds=1, grace_seconds=1, sandbox="bwrap", started_at=datetime.now(timezone.utc),
                eval_bytes=131072, extra={"metric_floor": 0.3, "eval_bytes_expected": 131072})
    RunMetrics(**base, metric_value=0.9).write(run)
    m, _ = load_verified(run)
    assert m is not None and m.status == "ok"
    RunMetrics(**base, metric_value=0.01).write(run)
    m, _ = load_verified(run)
    assert m is not None and (m.status, m.metric_value) == ("invalid", None) and "floor" in (m.reason or "")
    RunMetrics(**{**base, "eval_bytes": 1000}, metric_value=0.9).write(run)
    m, _ = load_verified(run)
    assert m is not None and m.status == "invalid" and "bytes" in (m.reason or "")


def test_a_record_written_before_the_typed_bounds_still_verifies_and_is_still_rechecked(tmp_path):
    """metrics.json files from before metric_floor/eval_bytes_expected/... were fields carry them in
    `extra`, signed as written: they verify unchanged, and the host still enforces them."""
    import json
    from datetime import datetime, timezone

    from autoresearch.record.keys import signing_key
    from autoresearch.record.metrics import METRICS_FILE, _mac
    run = tmp_path / "p" / "runs" / "0001"
    run.mkdir(parents=True)
    kid, key = signing_key(tmp_path / "p")
    for value, status in ((0.9, "ok"), (0.01, "invalid")):
        body = dict(run_id="0001", status="ok", metric_name="val_bpb", direction="minimize", train_py_sha256="x",
                    seed=1, budget_seconds=1, grace_seconds=1, sandbox="bwrap", metric_value=value,
                    started_at=datetime.now(timezone.utc).isoformat(), eval_bytes=131072, key_id=kid,
                    extra={"metric_floor": 0.3, "eval_bytes_expected": 131072, "train_exit_code": 0, "limits": "x"})
        body["signature"] = _mac(key, body)
        (run / METRICS_FILE).write_text(json.dumps(body))
        m, problem = load_verified(run)
        assert m is not None and problem is None and m.status == status, (problem, m)
        assert (m.metric_floor, m.eval_bytes_expected, m.train_exit_code, m.extra) == (0.3, 131072, 0, {"limits": "x"})


def test_a_record_whose_key_is_not_here_names_the_missing_key_not_tampering(tmp_path, monkeypatch):
    run = tmp_path / "p" / "runs" / "0001"
    run.mkdir(parents=True)
    from datetime import datetime, timezone
    RunMetrics(run_id="0001", status="ok", metric_name="m", direction="minimize", train_py_sha256="x", seed=1,
               budget_seconds=1, grace_seconds=1, sandbox="none", metric_value=1.0,
               started_at=datetime.now(timezone.utc)).write(run)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other"))
    m, problem = load_verified(run)
    assert m is None and problem and problem.startswith(KEY_MISSING) and RECORD_ALTERED not in problem
    assert "autoresearch keys import" in problem
    assert not os.path.exists(tmp_path / "p" / ".config")
