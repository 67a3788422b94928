"""Every way the guard can fail ends in a block, through the exact wired command.

Claude Code reads exit 1, 127, a timeout or unparseable stdout as "no decision" -- and then
the tool runs. These tests break the real parts (the virtualenv, the hook file, program.md,
the policy cache, the package, the interpreter, the clock) and require a deny each time.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from test_guard import ROOT, World, payload, run_hook

PIP = {"command": "pip install requests"}
RUN = {"command": './run.sh -m "try a smaller learning rate"'}


def bash(w: World, inp: dict, env: dict | None = None, timeout: float = 60):
    return run_hook(w.root, payload(w, "Bash", inp), env or w.env, timeout=timeout)


def edit(w: World, rel: str = "train.py", env: dict | None = None):
    return run_hook(w.root, payload(w, "Edit", {"file_path": str(w.root / rel), "old_string": "a",
                                                "new_string": "b"}), env or w.env)


@pytest.fixture
def world(tmp_path) -> World:
    w = World(tmp_path)
    assert bash(w, RUN).decision == "allow"              # healthy before we break it
    assert edit(w).decision == "allow"
    return w


def fake_python(w: World, script: str) -> None:
    """Replace the virtualenv's interpreter with a shell script (what a broken venv can look like)."""
    py = w.root / ".venv" / "bin" / "python"
    py.unlink()
    py.write_text("#!/bin/sh\n" + script + "\n")
    py.chmod(0o755)


def test_no_virtualenv(world: World) -> None:
    shutil.rmtree(world.root / ".venv")
    for got in (bash(world, RUN), edit(world)):
        assert got.decision == "deny" and got.rc == 2 and "guard failed" in got.stderr, got


def test_interpreter_is_not_executable(world: World) -> None:
    fake_python(world, "exit 0")
    (world.root / ".venv" / "bin" / "python").chmod(0o644)
    assert bash(world, RUN).decision == "deny"


def test_missing_hook_file(world: World) -> None:
    (world.root / "hooks" / "pre_tool_use.py").unlink()
    got = bash(world, RUN)
    assert got.decision == "deny" and got.rc == 2, got


def test_project_dir_not_set(world: World) -> None:
    env = {k: v for k, v in world.env.items() if k != "CLAUDE_PROJECT_DIR"}
    assert bash(world, RUN, env).decision == "deny"
    env["CLAUDE_PROJECT_DIR"] = str(world.root / "nowhere")
    assert bash(world, RUN, env).decision == "deny"


def test_missing_timeout_binary_is_a_deny(world: World) -> None:
    """The wrapper calls coreutils `timeout`; without it (exit 127) the call must still be blocked."""
    empty = world.root.parent / "empty-bin"
    empty.mkdir()
    got = run_hook(world.root, payload(world, "Bash", RUN), dict(world.env, PATH=str(empty)))
    assert got.decision == "deny" and got.rc == 2, got


@pytest.mark.parametrize("text,needle", [
    ("no front matter at all\n", "front matter"),
    ("---\nmetric: [unclosed\n---\n", "invalid YAML"),
    ("---\nmetric:\n  direction: sideways\n---\n", "metric.direction"),
    ("---\nbudgett: 3\n---\n", "budgett"),
    ("---\nphase: nowhere\n---\n", "phase"),
    ("---\neditable: [../prepare.py]\n---\n", "editable"),
])
def test_invalid_program_md_denies_and_names_the_problem(world: World, text: str, needle: str) -> None:
    (world.root / "program.md").write_text(text)
    for got in (bash(world, RUN), edit(world), run_hook(world.root, payload(world, "TodoWrite", {}), world.env)):
        assert got.decision == "deny" and "program.md" in got.reason and needle in got.reason, got


def test_program_md_missing_unreadable_or_not_text(world: World) -> None:
    p = world.root / "program.md"
    p.unlink()
    got = bash(world, RUN)
    assert got.decision == "deny" and "program.md: cannot read" in got.reason, got
    p.mkdir()                                           # a folder where the file should be
    got = bash(world, RUN)
    assert got.decision == "deny" and "program.md: cannot read" in got.reason, got
    p.rmdir()
    p.write_bytes(b"---\nobjective: \xff\xfe\n---\n")
    got = bash(world, RUN)
    assert got.decision == "deny" and "not UTF-8" in got.reason, got


def test_a_fixed_program_md_is_picked_up_again(world: World) -> None:
    good = (world.root / "program.md").read_text()
    (world.root / "program.md").write_text("---\nphase: nowhere\n---\n")
    assert bash(world, RUN).decision == "deny"
    (world.root / "program.md").write_text(good)
    assert bash(world, RUN).decision == "allow"


def test_corrupt_or_stale_cache_is_rebuilt(world: World) -> None:
    cache = world.root / ".autoresearch" / "guard-policy.json"
    assert cache.is_file()
    for junk in (b"", b"{not json", b"[]", b'{"version": 1, "program_sha256": "00"}', b"\x00" * 64):
        cache.write_bytes(junk)
        assert bash(world, PIP).decision == "deny"
        assert bash(world, RUN).decision == "allow"
        assert edit(world).decision == "allow" and edit(world, "prepare.py").decision == "deny"
        assert b"program_sha256" in cache.read_bytes()


def test_malformed_cache_with_the_right_hash_is_rebuilt(world: World) -> None:
    import json
    cache = world.root / ".autoresearch" / "guard-policy.json"
    data = json.loads(cache.read_text())
    for bad in ({"editable": "train.py"}, {"editable": ["/etc/passwd"]}, {"editable": ["../x"]},
                {"web": "yes"}, {"phase": None}):
        cache.write_text(json.dumps({**data, **bad}))
        assert edit(world).decision == "allow"
        assert json.loads(cache.read_text())["editable"] == ["train.py", "scratchpad.md"]


def test_a_forged_cache_cannot_open_the_harness(world: World) -> None:
    """Even a cache that claims prepare.py is editable (with the right hash) cannot unlock it."""
    import json
    cache = world.root / ".autoresearch" / "guard-policy.json"
    data = json.loads(cache.read_text())
    cache.write_text(json.dumps({**data, "editable": ["train.py", "prepare.py", "program.md"]}))
    for f in ("prepare.py", "program.md"):
        got = edit(world, f)
        assert got.decision == "deny" and "never editable" in got.reason, got


def test_unwritable_cache_still_decides(world: World) -> None:
    shutil.rmtree(world.root / ".autoresearch")
    (world.root / ".autoresearch").write_text("a file where the cache folder should be")
    assert bash(world, PIP).decision == "deny"
    assert bash(world, RUN).decision == "allow"


# Every module a Bash decision imports (the package, its hot-path modules, the command language);
# explain.py is for humans and never on the hook's path.
HOT_PATH = ["__init__.py", "respond.py", "policy.py", "tools.py", "paths.py", "search.py", "cmdlang.py"]


def test_the_hot_path_list_names_every_guard_module() -> None:
    found = {p.name for p in (ROOT / "autoresearch" / "guard").glob("*.py")}
    assert found - {"explain.py", "urls.py"} == set(HOT_PATH), found


def test_broken_url_module_is_a_deny_for_web_fetch(tmp_path) -> None:
    """urls.py loads only for WebFetch (in a `web: true` phase): broken, it denies that call."""
    text = (ROOT / "program.md").read_text().replace("phase: hyperparameters", "phase: moonshot")
    w = World(tmp_path, program=text)
    assert w.tool("WebFetch", url="https://93.184.216.34/", prompt="x").decision == "allow"
    (w.root / "autoresearch" / "guard" / "urls.py").write_text("raise RuntimeError('half-written upgrade')\n")
    got = w.tool("WebFetch", url="https://93.184.216.34/", prompt="x")
    assert got.decision == "deny" and "half-written upgrade" in got.stderr, got


@pytest.mark.parametrize("module", HOT_PATH)
def test_broken_package_is_a_deny(world: World, module: str) -> None:
    (world.root / "autoresearch" / "guard" / module).write_text("raise RuntimeError('half-written upgrade')\n")
    got = bash(world, RUN)
    assert got.decision == "deny" and got.rc == 2 and "half-written upgrade" in got.stderr, got


def test_exception_inside_a_decision_is_a_deny(world: World) -> None:
    (world.root / "autoresearch" / "guard" / "cmdlang.py").write_text(
        "class Denied(Exception): pass\n"
        "def match(*a):\n    raise RuntimeError('a bug in the analysis')\n")
    got = bash(world, RUN)
    assert got.decision == "deny" and got.rc == 2 and "a bug in the analysis" in got.stderr, got


def test_virtualenv_without_packages(world: World) -> None:
    """An interpreter whose site-packages is empty: deciding Bash needs no third-party package
    (the command language is plain Python), and rebuilding the policy (pydantic/yaml) denies
    instead of falling through."""
    site = next((world.root / ".venv" / "lib").iterdir()) / "site-packages"
    site.unlink()
    site.mkdir()
    assert bash(world, RUN).decision == "allow"
    assert bash(world, PIP).decision == "deny"
    shutil.rmtree(world.root / ".autoresearch")          # the next Edit must compile program.md
    got = edit(world)
    assert got.decision == "deny" and ("yaml" in got.stderr or "pydantic" in got.stderr), got


def test_garbage_stdout_is_a_deny(world: World) -> None:
    allow = '{"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow"}}'
    for script in ("echo hello; exit 0",                              # not JSON
                   f"echo 'warning: x'; echo '{allow}'",              # junk before the JSON
                   f"echo '{allow}'; exit 1",                          # right JSON, wrong exit
                   f"echo '{allow}'; kill -9 $$",                      # killed after printing
                   "exit 0",                                           # nothing at all
                   "echo '{\"decision\": \"approve\"}'"):              # some other JSON
        fake_python(world, script)
        got = bash(world, PIP)
        assert got.decision == "deny" and got.rc == 2, (script, got)


def test_hang_before_python_starts_is_killed_and_denied(world: World) -> None:
    fake_python(world, "sleep 60")
    t0 = time.monotonic()
    got = bash(world, PIP, timeout=30)
    took = time.monotonic() - t0
    assert got.decision == "deny" and got.rc == 2 and "exit 137" in got.stderr, got
    assert took < 20, took                               # well inside Claude Code's own hook timeout


def test_hang_inside_the_guard_is_denied(world: World) -> None:
    """program.md is a FIFO nobody writes: reading it blocks forever; the in-process alarm denies."""
    p = world.root / "program.md"
    p.unlink()
    os.mkfifo(p)
    t0 = time.monotonic()
    got = bash(world, RUN, timeout=30)
    assert got.decision == "deny" and got.rc == 2 and "took longer" in got.stderr, got
    assert time.monotonic() - t0 < 9                     # the alarm, before the wrapper's kill at 10 s


def test_settings_command_matches_what_these_tests_run() -> None:
    from test_guard import wired_command
    assert "$CLAUDE_PROJECT_DIR/.venv/bin/python" in wired_command()
    assert Path(ROOT / "hooks" / "pre_tool_use.py").is_file()
