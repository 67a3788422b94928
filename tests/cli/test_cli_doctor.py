"""`autoresearch doctor`: each check finds what is there and names the fix for what is not."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.cli.doctor import check_claude, check_hooks, run_checks, run_hook, wired_commands

ROOT = Path(__file__).resolve().parents[2]
DENY = ('{"hookSpecificOutput":{"hookEventName":"PreToolUse","permissionDecision":"deny",'
        '"permissionDecisionReason":"no"}}')
ALLOW = DENY.replace('"deny"', '"allow"')
# a tiny but real policy: deny pip, allow the rest
GUARD = f"""if grep -q 'pip install'; then echo '{DENY}'; else echo '{ALLOW}'; fi"""

_XDG = {k: os.environ[k] for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME")}   # the session's keys and state


@pytest.fixture(autouse=True)
def private_claude_config(tmp_path, monkeypatch):
    """run_checks starts a Claude Code session (the canary): never in the real user's config."""
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))


def project(tmp: Path, settings: dict | None) -> Path:
    root = tmp / "proj"
    root.mkdir()
    shutil.copy(ROOT / "program.md", root / "program.md")
    (root / "train.py").write_text("print(1)\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "train.py"], check=True)
    if settings is not None:
        (root / ".claude").mkdir()
        (root / ".claude" / "settings.json").write_text(json.dumps(settings))
    return root


def wiring(pre: str, bash_ms: int = 3_600_000) -> dict:
    return {"hooks": {"PreToolUse": [{"matcher": "Bash|Edit", "hooks": [{"type": "command", "command": pre}]}],
                      "Stop": [{"hooks": [{"type": "command", "command": "true"}]}],
                      "SessionStart": [{"hooks": [{"type": "command", "command": "true"}]}]},
            "permissions": {"deny": ["Bash(pip:*)"]},
            "env": {"BASH_MAX_TIMEOUT_MS": str(bash_ms)}}


def by_name(checks, name):
    return next(c for c in checks if c.name == name)


def test_a_working_guard_passes(tmp_path):
    root = project(tmp_path, wiring(GUARD))
    checks = {c.name: c for c in check_hooks(root, None)}
    assert checks["hooks: wiring"].level == "ok"
    assert checks["hooks: guard"].level == "ok", checks["hooks: guard"]
    assert checks["hooks: deny rules"].level == "ok"


def test_a_guard_whose_interpreter_is_missing_fails(tmp_path):
    root = project(tmp_path, wiring("/nonexistent/.venv/bin/python hooks/pre_tool_use.py"))
    c = by_name(check_hooks(root, None), "hooks: guard")
    assert c.level == "fail" and "NOT denied" in c.found and "python" in c.fix


def test_a_guard_that_allows_everything_fails(tmp_path):
    root = project(tmp_path, wiring(f"echo '{ALLOW}'"))
    assert by_name(check_hooks(root, None), "hooks: guard").level == "fail"


def test_exit_code_2_counts_as_deny_and_a_crash_as_no_decision(tmp_path):
    root = tmp_path
    assert run_hook("cat >/dev/null; echo blocked >&2; exit 2", root, "{}") == "deny"
    assert run_hook("cat >/dev/null; exit 1", root, "{}") == "none"
    assert run_hook(f"cat >/dev/null; echo '{DENY}'", root, "{}") == "deny"
    assert run_hook("sleep 5", root, "{}", timeout=0.5) == "none"


def test_matchers_select_the_hooks_for_a_tool():
    s = wiring("x")
    assert wired_commands(s, "PreToolUse", "Bash") == [("x", 60.0)]
    assert wired_commands(s, "PreToolUse", "Read") == []
    assert wired_commands(s, "Stop") == [("true", 60.0)]


def test_missing_settings_and_short_bash_timeout(tmp_path):
    root = project(tmp_path, None)
    c = check_hooks(root, None)[0]
    assert c.level == "fail" and "does not exist" in c.found and "autoresearch init" in c.fix
    from autoresearch.program import load_program
    (root / ".claude").mkdir()
    (root / ".claude" / "settings.json").write_text(json.dumps(wiring(GUARD, bash_ms=120_000)))
    t = by_name(check_hooks(root, load_program(root)), "hooks: bash timeout")
    assert t.level == "fail" and "BASH_MAX_TIMEOUT_MS" in t.fix


def test_broken_program_is_named_and_the_rest_still_runs(tmp_path):
    root = project(tmp_path, wiring(GUARD))
    text = (root / "program.md").read_text().replace("phase: hyperparameters", "phase: nope")
    (root / "program.md").write_text(text)
    checks = run_checks(root)
    prog = by_name(checks, "program.md")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("phase: nope"))
    assert prog.level == "fail" and f"line {line}: phase" in prog.found
    assert by_name(checks, "hooks: guard").level == "ok"
    assert {c.name for c in checks} >= {"python", "git", "gpu / torch", "claude code", "data"}


def test_untracked_train_script_fails_git(tmp_path):
    root = project(tmp_path, wiring(GUARD))
    subprocess.run(["git", "-C", str(root), "rm", "-q", "--cached", "train.py"], check=True)
    c = by_name(run_checks(root), "git")
    assert c.level == "fail" and "not tracked" in c.found


def test_claude_cli_version_is_reported():
    c = check_claude(ROOT, None)
    assert c.level in ("ok", "warn") and "claude" in c.found


def test_doctor_command_exit_code(tmp_path):
    root = project(tmp_path, None)
    home = tmp_path / "home"                      # the canary starts a Claude Code session: not in the real HOME
    (home / ".claude").mkdir(parents=True)
    p = subprocess.run([sys.executable, "-m", "autoresearch", "doctor"], cwd=root, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(home), **_XDG})
    assert p.returncode == 1
    assert "check(s) failed" in p.stdout and "hooks" in p.stdout


def test_doctor_json_is_the_report_model_and_matches_the_table(tmp_path):
    from autoresearch.cli.doctor import DoctorReport
    root = project(tmp_path, None)
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "HOME": str(home)}
    p = subprocess.run([sys.executable, "-m", "autoresearch", "doctor", "--json"], cwd=root, capture_output=True,
                       text=True, env=env)
    assert p.returncode == 1                                   # the same verdict as the table: hooks missing
    rep = DoctorReport.model_validate_json(p.stdout)
    assert rep.ready is False and rep.root == str(root)
    names = [c.name for c in rep.checks]
    assert {"python", "program.md", "git", "sandbox: chosen", "claude code", "hooks"} <= set(names)
    hooks = next(c for c in rep.checks if c.name == "hooks")
    assert hooks.level == "fail" and "settings.json does not exist" in hooks.found
    table = subprocess.run([sys.executable, "-m", "autoresearch", "doctor"], cwd=root, capture_output=True,
                           text=True, env=env).stdout
    for name in rep.failed:
        assert name in table


def _fake_claude(tmp_path: Path, real: Path, extra: str) -> Path:
    """A `claude` on PATH that says it is another version and runs the real CLI (with EXTRA args)."""
    bin_ = tmp_path / "fakebin"
    bin_.mkdir()
    exe = bin_ / "claude"
    exe.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "9.9.9 (Claude Code)"; exit 0; }}\n'
                   f'exec "{real}" "$@" {extra}\n')
    exe.chmod(0o755)
    return bin_


@pytest.mark.claude
@pytest.mark.parametrize("extra, level, said", [
    ("", "ok", "the same tools, hook fields and tool inputs"),
    ("--disallowedTools Write", "warn", "tools offered to the model: removed Write"),
])
def test_another_claude_version_is_probed_offline_and_only_a_real_change_warns(tmp_path, claude_cli, monkeypatch,
                                                                               extra, level, said):
    monkeypatch.setenv("PATH", f"{_fake_claude(tmp_path, claude_cli, extra)}:{os.environ['PATH']}")
    c = check_claude(ROOT, None)
    assert c.level == level, c
    assert "9.9.9" in c.found and "CI tests 2.1.337" in c.found and said in c.found, c.found


@pytest.mark.claude
def test_the_canary_needs_the_guard_to_deny_in_a_real_session(tmp_path, monkeypatch):
    """doctor's canary starts Claude Code in the project as `claude` would: with the project's
    wiring the guard denies its call; without it (as when a plugin fails to load) the call runs,
    and the check fails naming the fix."""
    from autoresearch.cli.canary import check_canary
    from e2e.harness import cli_path, make_project
    from conftest import need
    need("claude", cli_path() is not None, "the Claude Code CLI bundled in claude-agent-sdk is missing")
    proj = make_project(tmp_path)
    for k in list(os.environ):
        if k.startswith(("ANTHROPIC_", "CLAUDE")):
            monkeypatch.delenv(k)
    for k, v in proj.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATH", f"{cli_path().parent}:{os.environ['PATH']}")
    ok = check_canary(proj.root, None)
    assert ok.level == "ok" and "denied by the guard" in ok.found, ok
    settings = proj.root / ".claude" / "settings.json"
    settings.write_text(json.dumps({"env": json.loads(settings.read_text())["env"]}))
    bad = check_canary(proj.root, None)
    assert bad.level == "fail" and "RAN: no guard stopped it" in bad.found, bad
    assert "autoresearch init" in bad.fix and "marketplace add" in bad.fix, bad
