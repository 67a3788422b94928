"""`autoresearch pause` / `resume` through the real command: idempotent, honest, and the deadline
clock moves only when the human asks (`resume --restart-clock`)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from autoresearch.loop import state
from test_cli_status_plot import cli, make_project


def test_a_second_pause_keeps_the_first_reason_unless_asked_to_update(tmp_path):
    root = make_project(tmp_path)
    p = cli(root, "pause", "going", "to", "bed")
    assert p.returncode == 0 and p.stdout.startswith("paused:")
    first = state.paused(root)
    assert first.reason == "going to bed"
    p = cli(root, "pause", "something else")
    assert p.returncode == 0 and "already paused" in p.stdout and "going to bed" in p.stdout
    assert "--update" in p.stdout
    assert state.paused(root) == first                           # same reason, same time: untouched
    p = cli(root, "pause", "--update", "checking the logs")
    assert p.returncode == 0 and "reason updated: going to bed -> checking the logs" in p.stdout
    assert state.paused(root).reason == "checking the logs"


def test_resume_when_not_paused_says_so_and_does_not_move_the_deadline(tmp_path):
    root = make_project(tmp_path)
    st = state.read_state(root)
    st.started_at = datetime(2026, 1, 1, 22, 0, tzinfo=timezone.utc)
    state.write_state(root, st)
    p = cli(root, "resume")
    assert p.returncode == 0, p.stderr
    assert "not paused" in p.stdout and "resumed" not in p.stdout
    assert "deadline is unchanged: 2026-01-02 08:00 UTC" in p.stdout and "already passed" in p.stdout
    assert state.read_state(root).started_at == st.started_at


def test_resume_lifts_the_pause_and_keeps_the_clock_unless_asked(tmp_path):
    root = make_project(tmp_path)
    started = datetime.now(timezone.utc) - timedelta(hours=2)
    st = state.read_state(root)
    st.started_at = started
    state.write_state(root, st)
    cli(root, "pause", "lunch")
    p = cli(root, "resume")
    assert p.returncode == 0 and p.stdout.startswith("resumed: the pause is lifted.")
    assert "deadline is unchanged" in p.stdout and "already passed" not in p.stdout
    assert state.paused(root) is None and state.read_state(root).started_at == started
    p = cli(root, "resume", "--restart-clock")
    assert p.returncode == 0 and "not paused" in p.stdout and "deadline clock restarted" in p.stdout
    assert state.read_state(root).started_at > started + timedelta(hours=1)
