"""`autoresearch overnight`: the real Claude Code CLI through claude-agent-sdk, against the scripted
fake API, in a copy of this project with its real hooks. A night that ends when the loop says so,
one that survives a CLI crash by resuming the same session, and one stopped at its deadline."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autoresearch.loop import state
from autoresearch.cli.overnight import DriverError, Night, OvernightState, last_session
from conftest import need
from e2e.fake_api import FakeAPI, bash, count_assistant, end_turn, human, say
from e2e.harness import Project, cli_path, make_project

pytestmark = pytest.mark.claude
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def proj(tmp_path: Path) -> Project:
    need("claude", cli_path() is not None, "the Claude Code CLI bundled in claude-agent-sdk is missing")
    return make_project(tmp_path)


def drive(proj: Project, api: FakeAPI, hours: float, monkeypatch, **kw) -> tuple[Night, OvernightState]:
    env = dict(proj.env, ANTHROPIC_BASE_URL=api.url, AUTORESEARCH_MAX_EXPERIMENTS="0")
    for k in list(os.environ):                     # the CLI inherits the test's environment: keep it private
        if k.startswith(("ANTHROPIC_", "CLAUDE")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    night = Night(proj.root, hours, env=env, backoff=(0.2,), **kw)
    return night, asyncio.run(night.run())


def log_lines(proj: Project) -> list[list[str]]:
    return [ln.split("\t") for ln in proj.read(".autoresearch/overnight.log").splitlines()]


def test_the_command_runs_a_night_that_ends_when_the_loop_says_so(proj):
    script = [say("Looking around first.") + bash("ls"), end_turn("Nothing more to do.")]
    with FakeAPI(script, project=str(proj.root)) as api:
        p = subprocess.run([str(proj.root / ".venv" / "bin" / "autoresearch"), "overnight", "--hours", "0.05"],
                           cwd=proj.root, capture_output=True, text=True, timeout=240,
                           env=dict(proj.env, ANTHROPIC_BASE_URL=api.url, AUTORESEARCH_MAX_EXPERIMENTS="0",
                                    COLUMNS="120"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    # in a pipe: plain lines, one per event as it happens (no live panel, no escape codes), then why it ended
    lines = p.stdout.splitlines()
    assert "\x1b" not in p.stdout and lines, p.stdout
    events = [ln.split()[1] for ln in lines[:-1]]
    assert events[0] == "night" and {"canary", "tool", "result"} <= set(events), p.stdout
    assert lines[-1].startswith("done: budget reached: ") and "resume" not in lines[-1], lines[-1]
    [ls] = api.results()
    assert ls.name == "Bash" and not ls.is_error        # the project's guard allowed it explicitly
    st = OvernightState.model_validate_json(proj.read(".autoresearch/overnight.json"))
    assert st.status == "done" and st.sessions == 1 and st.errors == 0 and st.session_id
    kinds = [ln[1] for ln in log_lines(proj)]
    assert kinds[0] == "night" and "tool" in kinds and "result" in kinds and kinds[-1] == "night"
    canary = [ln[2] for ln in log_lines(proj) if ln[1] == "canary"]
    assert canary[-1] == "`echo autoresearch-canary` was denied by the guard", canary   # checked before the night
    assert last_session(proj.root) == st.session_id
    # the project's settings were used: its SessionStart hook spoke to the model
    assert any("autoresearch loop state" in t for t in api.shown())


def test_a_denied_action_stays_denied_under_the_driver(proj, monkeypatch):
    script = [bash("pip install requests"), bash("curl http://example.com"), end_turn("ok")]
    with FakeAPI(script, project=str(proj.root)) as api:
        _, st = drive(proj, api, 0.05, monkeypatch)
    assert st.status == "done"
    assert [r.is_error for r in api.results()] == [True, True]
    assert any(ln[1] == "denied" for ln in log_lines(proj))


def _cli_children() -> list[int]:
    """Our own child processes running the Claude Code CLI (the SDK starts it)."""
    me, out = os.getpid(), []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"claude" in cmd:
            out.append(int(d))
    return out


def test_a_crashed_cli_is_resumed_in_the_same_session(proj, monkeypatch):
    killed: list[int] = []

    def crash() -> None:                              # idempotent: the CLI dies once
        if not killed:
            for pid in _cli_children():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    script = [say("First look.") + bash("ls"), human(crash) + say("Again.") + bash("ls -a"), end_turn("done")]
    with FakeAPI(script, project=str(proj.root)) as api:
        _, st = drive(proj, api, 0.05, monkeypatch)
        first_tool = api.main_requests[1].body["messages"]
    assert killed, "the CLI was never killed"
    assert st.status == "done" and st.errors == 1 and st.sessions == 2
    # the resumed conversation carries the first session's tool call: same session, not a fresh one
    first_ids = {b["id"] for m in first_tool if m["role"] == "assistant" for b in m["content"]
                 if isinstance(b, dict) and b.get("type") == "tool_use"}
    resumed = api.main_requests[-1].body["messages"]
    assert first_ids and first_ids <= {b["id"] for m in resumed if m["role"] == "assistant"
                                       for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use"}
    assert count_assistant(api.main_requests[-1].body) >= 2
    log = log_lines(proj)
    assert any(ln[1] == "error" and "resuming the same session" in ln[2] for ln in log)
    assert [ln[2] for ln in log if ln[1] == "start"][1].startswith(f"resuming {st.session_id}")


def test_the_deadline_pauses_then_interrupts_and_lifts_its_pause(proj, monkeypatch):
    script = [human(lambda: time.sleep(8)) + say("thinking for a long time") + bash("ls"), end_turn("done")]
    t0 = time.monotonic()
    with FakeAPI(script, project=str(proj.root)) as api:
        _, st = drive(proj, api, 1.5 / 3600, monkeypatch, grace_s=1.0)
    assert st.status == "deadline", st
    assert st.reason.startswith("the --hours deadline was reached") and "resume" not in st.reason, st.reason
    assert time.monotonic() - t0 < 60
    log = log_lines(proj)
    assert any(ln[1] == "deadline" and "paused the loop" in ln[2] for ln in log)
    assert any(ln[1] == "deadline" and "interrupting" in ln[2] for ln in log)
    assert any(ln[1] == "deadline" and "lifted the pause" in ln[2] for ln in log)
    assert state.paused(proj.root) is None


def test_a_users_own_pause_is_left_alone(proj, monkeypatch):
    state.pause(proj.root, "mine")
    with FakeAPI([end_turn("paused, stopping")], project=str(proj.root)) as api:
        _, st = drive(proj, api, 0.05, monkeypatch)
    assert st.status == "done" and st.reason.startswith("paused by a human (mine)")
    assert "`autoresearch resume`, then `autoresearch overnight --hours 0.05 --resume`" in st.reason, st.reason
    assert state.paused(proj.root).reason == "mine"


def test_a_project_without_guard_wiring_gets_the_bundle_as_plugin_or_is_refused(tmp_path, monkeypatch):
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "program.md").write_text((ROOT / "program.md").read_text())
    assert Night(proj, 1).plugin == str(ROOT)
    import autoresearch.cli.overnight as driver
    monkeypatch.setattr(driver, "BUNDLE", tmp_path / "not-a-plugin")
    with pytest.raises(DriverError, match="does not wire the autoresearch guard"):
        Night(proj, 1)


def _plugin_night(proj: Project, tmp_path: Path, monkeypatch, api: FakeAPI, experiments: str) -> tuple[Night, Path]:
    """A project without guard wiring of its own, and a copy of the bundle the night loads as its plugin."""
    import json
    import shutil
    import autoresearch.cli.overnight as driver
    settings = proj.root / ".claude" / "settings.json"
    settings.write_text(json.dumps({"env": json.loads(settings.read_text())["env"]}))   # no wiring: plugin mode
    plugin = tmp_path / "market" / "autoresearch"
    for part in (".claude-plugin", "hooks", "scripts", "autoresearch"):
        shutil.copytree(ROOT / part, plugin / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(driver, "BUNDLE", plugin)
    env = dict(proj.env, ANTHROPIC_BASE_URL=api.url, AUTORESEARCH_MAX_EXPERIMENTS=experiments)
    for k in list(os.environ):
        if k.startswith(("ANTHROPIC_", "CLAUDE")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    night = Night(proj.root, 0.05, env=env, backoff=(0.2,))
    assert night.plugin == str(plugin)
    return night, plugin


def test_with_the_plugin_loaded_the_canary_passes_and_the_night_runs(proj, tmp_path, monkeypatch):
    with FakeAPI([say("Looking around.") + bash("ls"), end_turn("done")], project=str(proj.root)) as api:
        night, _ = _plugin_night(proj, tmp_path, monkeypatch, api, "0")
        st = asyncio.run(night.run())
    assert st.status == "done", st
    assert [ln[2] for ln in log_lines(proj) if ln[1] == "canary"][-1] == \
        "`echo autoresearch-canary` was denied by the guard"
    [ls] = api.results()
    assert ls.name == "Bash" and not ls.is_error          # the plugin's guard allowed it explicitly


def test_without_the_guard_the_night_stops_before_the_first_experiment_naming_the_fix(proj, tmp_path, monkeypatch):
    """The plugin the night would load is gone by the time the session starts (a moved marketplace
    folder: Claude Code then runs without its hooks and says nothing). The canary's call is not
    denied by the guard, so the night ends before the agent's first turn, with the fix."""
    script = [say("Starting.") + bash('./run.sh -m "baseline"'), end_turn("done")]
    with FakeAPI(script, project=str(proj.root)) as api:
        night, plugin = _plugin_night(proj, tmp_path, monkeypatch, api, "1")
        plugin.parent.rename(tmp_path / "moved")          # the marketplace folder moves
        st = asyncio.run(night.run())
        assert api.requests == [], "the agent's session started without the guard"
    assert st.status == "fatal" and "before the first experiment" in st.reason, st
    assert "RAN: no guard stopped it" in st.reason and "autoresearch doctor" in st.reason, st
    assert "marketplace add" in st.reason and "failed to load" in st.reason, st
    assert not (proj.root / "runs").exists() or not any((proj.root / "runs").iterdir())
    kinds = [ln[1] for ln in log_lines(proj)]
    assert "canary" in kinds and "fatal" in kinds and "start" not in kinds, kinds


def test_hours_must_be_positive(proj):
    p = subprocess.run([str(proj.root / ".venv" / "bin" / "autoresearch"), "overnight", "--hours", "0"],
                       cwd=proj.root, capture_output=True, text=True, env=proj.env)
    assert p.returncode == 2 and "--hours" in p.stdout


def test_resume_without_a_recorded_session_is_refused(proj):
    p = subprocess.run([str(proj.root / ".venv" / "bin" / "autoresearch"), "overnight", "--hours", "1", "--resume"],
                       cwd=proj.root, capture_output=True, text=True, env=proj.env)
    assert p.returncode == 2 and "no earlier session" in p.stdout


# --- errors no retry can fix, and the end-of-night message -------------------------------------

def _overnight(proj: Project, api: FakeAPI, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(proj.root / ".venv" / "bin" / "autoresearch"), "overnight", "--hours", "1", *args],
                          cwd=proj.root, capture_output=True, text=True, timeout=240,
                          env=dict(proj.env, ANTHROPIC_BASE_URL=api.url, AUTORESEARCH_MAX_EXPERIMENTS="0",
                                   AUTORESEARCH_RETRY_SECONDS="0.2", COLUMNS="200"))


def test_a_refused_login_ends_the_night_at_once_with_the_fix(proj):
    t0 = time.monotonic()
    with FakeAPI([end_turn("never reached")], project=str(proj.root), refuse=401) as api:
        p = _overnight(proj, api)
    took = time.monotonic() - t0
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-2000:]
    out = " ".join(p.stdout.split())
    assert "fatal:" in out and "HTTP 401" in out and "/login" in out and "ANTHROPIC_API_KEY" in out
    # the CLI alone retries a 401 ten times over ~3 minutes; the driver stops at the first report
    assert took < 60 and len(api.requests) <= 5, (took, len(api.requests))     # vs 11 requests
    st = OvernightState.model_validate_json(proj.read(".autoresearch/overnight.json"))
    assert st.status == "fatal" and st.sessions == 1 and st.errors == 0
    assert any(ln[1] == "fatal" for ln in log_lines(proj))


def test_an_unknown_model_is_fatal_not_retried(proj):
    with FakeAPI([end_turn("never reached")], project=str(proj.root), refuse=404) as api:
        p = _overnight(proj, api, "--model", "claude-no-such-model")
    assert p.returncode == 3 and "HTTP 404" in p.stdout and "--model" in p.stdout
    st = OvernightState.model_validate_json(proj.read(".autoresearch/overnight.json"))
    assert st.status == "fatal" and st.sessions == 1 and st.errors == 0     # never resumed
    assert len([r for r in api.requests if r.error == 404]) <= 2             # the turn and its title, once


def _with_notify(proj: Project, notify_yaml: str) -> None:
    text = proj.read("program.md")
    assert text.startswith("---\n")
    (proj.root / "program.md").write_text("---\n" + notify_yaml + text[4:])


def test_the_end_of_night_notification_runs_the_command_and_posts_the_webhook(proj):
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    got: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(_json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass
    srv = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    out = proj.root.parent / "notified.txt"
    _with_notify(proj, f"notify:\n  command: 'cat > {out}; echo \"$AUTORESEARCH_STATUS\" >> {out}'\n"
                       f"  webhook: http://127.0.0.1:{srv.server_address[1]}/hook\n")
    try:
        with FakeAPI([end_turn("Nothing to do.")], project=str(proj.root)) as api:
            p = _overnight(proj, api)
    finally:
        srv.shutdown()
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    text = out.read_text()
    assert "autoresearch overnight in" in text and "done:" in text and text.rstrip().endswith("done")
    assert len(got) == 1 and got[0]["status"] == "done" and "experiments tonight" in got[0]["text"]
    notes = [ln[2] for ln in log_lines(proj) if ln[1] == "notify"]
    assert "command exited 0" in notes and "webhook answered 204" in notes


def test_the_panel_shows_the_wave_in_flight(tmp_path):
    """The overnight screen's wave line: each running run's slot or node and elapsed / budget, and
    how many wait; no line without a wave."""
    from datetime import datetime, timedelta, timezone

    from autoresearch.cli.overnight import wave_line
    from autoresearch.record.queue import QueueEntry
    assert wave_line(tmp_path) is None
    now = datetime.now(timezone.utc)
    for rid, state, slot, node in (("0003", "running", 0, None), ("0004", "running", None, "node-b"),
                                   ("0005", "queued", None, None), ("0002", "done", 1, None)):
        (tmp_path / "runs" / rid).mkdir(parents=True)
        QueueEntry(run_id=rid, state=state, message=f"variant {rid}", budget_seconds=300, seed=1,
                   queued_at=now, slot=slot, node=node,
                   started_at=now - timedelta(seconds=42) if state != "queued" else None).write(tmp_path)
    line = wave_line(tmp_path)
    assert line is not None
    assert "0003 on slot 0 4" in line and "/300 s" in line and "0004 on node-b" in line
    assert line.endswith("1 queued") and "0002" not in line
