"""The plugin: it validates, its hooks are the bundle's own (derived, not copied by hand), and the
real Claude Code CLI loads it with --plugin-dir and is then guarded by it -- fail-closed when no
interpreter can be found, inert in a project that is not an autoresearch project."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from autoresearch.cli.doctor import DoctorReport, _hook_input, run_hook
from autoresearch.cli.wiring import (DATA_PY, ENTRY, SEARCH, WiringError, legacy_settings, load_settings, merge_settings,
                                     plugin_entry, plugin_hooks)
from e2e.fake_api import FakeAPI, bash, edit, end_turn, say
from e2e.harness import Project, base_env, make_project, run_claude

ROOT = Path(__file__).resolve().parents[2]
PIP = _hook_input(Path("/"), "Bash", {"command": "pip install requests"})


def cli(claude: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    # a closed local port as the API: `claude plugin ...` looks up api.anthropic.com otherwise (18 s each offline)
    env = {**base_env(home), "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    return subprocess.run([str(claude), *args], capture_output=True, text=True, timeout=120, env=env)


def plugin_copy(dest: Path) -> Path:
    """The plugin's own files (no .venv, no tests): what a marketplace install would carry."""
    for rel in (".claude-plugin", "hooks", "commands", "autoresearch", "scripts"):
        shutil.copytree(ROOT / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", dest / "README.md")
    return dest


# --- validation and derivation --------------------------------------------------------------

@pytest.mark.claude
def test_plugin_and_marketplace_validate_strictly(claude_cli, tmp_path):
    for manifest in ("plugin.json", "marketplace.json"):
        p = cli(claude_cli, tmp_path, "plugin", "validate", "--strict", str(ROOT / ".claude-plugin" / manifest))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "Validation passed" in p.stdout
    p = cli(claude_cli, tmp_path, "plugin", "validate", "--json", str(ROOT / ".claude-plugin" / "plugin.json"))
    provides = json.loads(p.stdout)["provides"]
    assert {"autoresearch:status", "autoresearch:plot", "autoresearch:pause"} <= set(provides["commands"])
    assert {h["event"] for h in provides["hooks"]} == {"PreToolUse", "Stop", "SessionStart", "PreCompact"}


def test_plugin_hooks_are_derived_from_the_bundles_settings():
    """hooks/hooks.json and its entry (scripts/hook) must equal what autoresearch.cli.wiring derives
    from .claude/settings.json: regenerate them with `python -m autoresearch.cli.wiring`."""
    assert json.loads((ROOT / "hooks" / "hooks.json").read_text()) == plugin_hooks(load_settings(ROOT))
    assert (ROOT / ENTRY).read_text() == plugin_entry(load_settings(ROOT))
    assert os.access(ROOT / ENTRY, os.X_OK)


def test_the_hooks_find_the_interpreter_once_in_the_clis_order():
    """One short command per event, one interpreter search (in the entry, not in hooks.json), and
    scripts/autoresearch searches the same places in the same order."""
    commands = json.dumps(plugin_hooks(load_settings(ROOT)))
    assert ".venv" not in commands and "py=" not in commands
    entry, cli_script = plugin_entry(load_settings(ROOT)), (ROOT / "scripts" / "autoresearch").read_text()
    assert entry.count(SEARCH) == 1 and entry.count(".venv/bin/python") == 3     # the search, and SessionStart's install gate
    lines = [ln.strip() for ln in cli_script.splitlines()]
    assert DATA_PY in lines and SEARCH in lines


def test_every_settings_event_has_a_plugin_hook_through_the_plugin_root():
    settings, hooks = load_settings(ROOT), plugin_hooks(load_settings(ROOT))["hooks"]
    assert set(hooks) == set(settings["hooks"])
    for event, groups in hooks.items():
        for g in groups:
            for h in g["hooks"]:
                assert h["command"].startswith(f'sh "${{CLAUDE_PLUGIN_ROOT}}/{ENTRY}" {event}')
    entry = plugin_entry(settings)
    assert "$CLAUDE_PROJECT_DIR/hooks/" not in entry
    assert all(f"  {event}) " in entry for event in settings["hooks"])
    assert entry.count('"$here/hooks/') == len(settings["hooks"])


def test_an_unknown_command_shape_is_refused_not_guessed():
    with pytest.raises(WiringError):
        plugin_hooks({"hooks": {"PreToolUse": [{"hooks": [{"type": "command", "command": "python guard.py"}]}]}})


def test_legacy_settings_use_absolute_bundle_paths_and_merge_keeps_the_users_own(tmp_path):
    ours = legacy_settings(load_settings(ROOT), ROOT, ROOT / ".venv" / "bin" / "python")
    text = json.dumps(ours)
    assert "$CLAUDE_PROJECT_DIR/.venv" not in text and f"{ROOT}/hooks/pre_tool_use.py" in text
    theirs = {"hooks": {"PostToolUse": [{"hooks": [{"type": "command", "command": "lint"}]}],
                        "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}]},
              "permissions": {"deny": ["Bash(rm:*)"], "allow": ["Bash(make:*)"]}, "model": "x"}
    merged = merge_settings(theirs, ours)
    assert merged["model"] == "x" and merged["permissions"]["allow"] == ["Bash(make:*)"]
    assert merged["permissions"]["deny"][0] == "Bash(rm:*)" and "Bash(pip:*)" in merged["permissions"]["deny"]
    assert [g["hooks"][0]["command"] for g in merged["hooks"]["Stop"]][0] == "notify-send done"
    assert len(merged["hooks"]["Stop"]) == 2
    again = merge_settings(merged, ours)                 # running init twice does not wire twice
    assert again == merged


# --- the hook commands, run as Claude Code runs them (sh, with the plugin root) --------------

def test_plugin_guard_is_inert_outside_an_autoresearch_project(tmp_path):
    [cmd] = [h["command"] for g in plugin_hooks(load_settings(ROOT))["hooks"]["PreToolUse"] for h in g["hooks"]]
    assert run_hook(cmd, tmp_path, PIP, env={"CLAUDE_PLUGIN_ROOT": str(ROOT)}) == "none"


def test_plugin_guard_denies_when_no_interpreter_can_be_found(tmp_path):
    [cmd] = [h["command"] for g in plugin_hooks(load_settings(ROOT))["hooks"]["PreToolUse"] for h in g["hooks"]]
    plugin = plugin_copy(tmp_path / "plugin")                  # no .venv in the plugin...
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "program.md", proj / "program.md")      # ...nor in the project
    ok = _hook_input(proj, "Bash", {"command": 'ls'})
    assert run_hook(cmd, proj, ok, env={"CLAUDE_PLUGIN_ROOT": str(plugin)}) == "deny"
    assert run_hook(cmd, proj, PIP, env={"CLAUDE_PLUGIN_ROOT": str(plugin)}) == "deny"


def test_plugin_guard_uses_the_project_venv_when_the_plugin_has_none(tmp_path):
    [cmd] = [h["command"] for g in plugin_hooks(load_settings(ROOT))["hooks"]["PreToolUse"] for h in g["hooks"]]
    plugin = plugin_copy(tmp_path / "plugin")
    proj = tmp_path / "proj"
    proj.mkdir()
    for f in ("program.md", "train.py", "scratchpad.md"):
        shutil.copy(ROOT / f, proj / f)
    os.symlink(ROOT / ".venv", proj / ".venv")
    run_sh = _hook_input(proj, "Bash", {"command": './run.sh -m "plugin probe"'})
    assert run_hook(cmd, proj, run_sh, env={"CLAUDE_PLUGIN_ROOT": str(plugin)}) == "allow"
    assert run_hook(cmd, proj, PIP, env={"CLAUDE_PLUGIN_ROOT": str(plugin)}) == "deny"


def test_loop_hooks_step_aside_when_the_project_wires_its_own(tmp_path):
    [cmd] = [h["command"] for g in plugin_hooks(load_settings(ROOT))["hooks"]["Stop"] for h in g["hooks"]]
    proj = tmp_path / "proj"
    (proj / ".claude").mkdir(parents=True)
    shutil.copy(ROOT / "program.md", proj / "program.md")
    shutil.copy(ROOT / ".claude" / "settings.json", proj / ".claude" / "settings.json")
    p = subprocess.run(["sh", "-c", cmd], input="{}", capture_output=True, text=True, cwd=proj,
                       env={**os.environ, "CLAUDE_PROJECT_DIR": str(proj), "CLAUDE_PLUGIN_ROOT": str(ROOT)})
    assert p.returncode == 0 and p.stdout == "" and p.stderr == ""   # stepped aside: no decision, no word


# --- the real CLI with --plugin-dir ---------------------------------------------------------

def plugin_only_project(tmp_path: Path) -> Project:
    """A research project whose own .claude/settings.json is gone: only the plugin guards it."""
    proj = make_project(tmp_path)
    (proj.root / ".claude" / "settings.json").unlink()
    return proj


def installed_plugin(tmp_path: Path) -> Path:
    """The plugin in its own folder with the bundle's .venv, as after `marketplace add` of a
    bootstrapped checkout. (Claude Code treats files inside a plugin folder as sensitive, so the
    plugin folder is never the project itself.)"""
    plugin = plugin_copy(tmp_path / "plugin")
    os.symlink(ROOT / ".venv", plugin / ".venv")
    return plugin


@pytest.mark.claude
def test_cli_loads_the_plugin_and_its_guard_decides(claude_cli, tmp_path):
    proj = plugin_only_project(tmp_path)
    script = [
        say("Installing a helper first.") + bash("pip install requests"),
        edit("scratchpad.md", "(none yet: the first run is the baseline)", "(none yet; plugin test)"),
        edit("program.md", "direction: minimize", "direction: maximize"),
        end_turn("Done."),
    ]
    with FakeAPI(script, project=str(proj.root)) as api:
        run = run_claude(proj, api.url, "go", "--plugin-dir", str(installed_plugin(tmp_path)),
                         env={"AUTORESEARCH_MAX_EXPERIMENTS": "0"})
    init = next(e for e in run.events if e.get("type") == "system" and e.get("subtype") == "init")
    assert any(p["name"] == "autoresearch" for p in init["plugins"]), init["plugins"]
    assert {"autoresearch:status", "autoresearch:pause"} <= set(init["slash_commands"])
    results = {r.input.get("command") or r.input.get("file_path"): r for r in api.results()}
    pip = results["pip install requests"]
    assert pip.is_error and "pip" in pip.text
    assert not results[str(proj.path("scratchpad.md"))].is_error, run.describe()   # the guard's explicit allow
    assert "plugin test" in proj.read("scratchpad.md")
    assert results[str(proj.path("program.md"))].is_error
    assert "direction: minimize" in proj.read("program.md")


@pytest.mark.claude
def test_cli_with_the_plugin_denies_everything_without_an_interpreter(claude_cli, tmp_path):
    proj = plugin_only_project(tmp_path)
    (proj.root / ".venv").unlink()
    plugin = plugin_copy(tmp_path / "plugin")
    script = [edit("scratchpad.md", "(none yet: the first run is the baseline)", "(edited)"),
              bash("ls"), end_turn("Done.")]
    with FakeAPI(script, project=str(proj.root)) as api:     # PYTHON=/nonexistent: the first-use install fails
        run_claude(proj, api.url, "go", "--plugin-dir", str(plugin), env={"PYTHON": "/nonexistent"})
    res = api.results()
    assert len(res) == 2 and all(r.is_error for r in res), [(r.name, r.text[:200]) for r in res]
    assert any("guard failed" in r.text for r in res)
    assert "(edited)" not in proj.read("scratchpad.md")


@pytest.mark.claude
def test_slash_command_runs_autoresearch_status(claude_cli, tmp_path):
    proj = plugin_only_project(tmp_path)
    with FakeAPI([end_turn("Here is the table.")], project=str(proj.root)) as api:
        run = run_claude(proj, api.url, "/autoresearch:status", "--plugin-dir", str(installed_plugin(tmp_path)),
                         env={"AUTORESEARCH_MAX_EXPERIMENTS": "0"})
    shown = "\n".join(api.shown())
    assert "autoresearch status" in shown, run.describe()
    assert "val_bpb (lower is better)" in shown and "No experiments yet" in shown


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.mark.claude
def test_marketplace_add_then_install_from_the_packed_clean_tree(claude_cli, tmp_path):
    """scripts/pack-plugin.sh ships only the plugin's tracked files, so the CLI's plugin cache holds
    a few hundred KB, not this checkout's .venv (1.5 GB), runs/ or results."""
    market = tmp_path / "market"
    p = subprocess.run([str(ROOT / "scripts" / "pack-plugin.sh"), str(market)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    home = tmp_path / "home"
    p = cli(claude_cli, home, "plugin", "marketplace", "add", str(market))
    assert p.returncode == 0, p.stdout + p.stderr
    p = cli(claude_cli, home, "plugin", "install", "autoresearch@autoresearch")
    assert p.returncode == 0, p.stdout + p.stderr
    p = cli(claude_cli, home, "plugin", "list")
    assert "autoresearch@autoresearch" in p.stdout and "enabled" in p.stdout
    cache = home / ".claude" / "plugins" / "cache"
    cached = list(cache.rglob("hooks/hooks.json"))
    assert cached and json.loads(cached[0].read_text()) == json.loads((ROOT / "hooks" / "hooks.json").read_text())
    plugin = cached[0].parent.parent
    for absent in (".venv", "runs", "results.tsv", "tests", ".autoresearch", "progress.png"):
        assert not (plugin / absent).exists(), absent
    assert (plugin / "scripts" / "autoresearch").is_file() and (plugin / "commands" / "final.md").is_file()
    assert _tree_bytes(cache) < 2_000_000, _tree_bytes(cache)
    # installed and enabled: doctor now knows a project without its own wiring is in plugin-only mode
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "program.md", proj / "program.md")
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    env = {**base_env(home), "COLUMNS": "250"}
    doctor = [str(ROOT / ".venv" / "bin" / "python"), "-m", "autoresearch", "doctor", "--json"]
    rep = DoctorReport.model_validate_json(subprocess.run(doctor, cwd=proj, env=env, capture_output=True,
                                                          text=True).stdout)
    checks = {c.name: c for c in rep.checks}
    assert "plugin-only mode" in checks["hooks"].found
    plug = checks["settings: plugin-only"]
    assert plug.level == "fail" and "CLAUDE_CODE_STOP_HOOK_BLOCK_CAP" in plug.found
    assert "BASH_DEFAULT_TIMEOUT_MS" in plug.found and "init --plugin" in plug.fix


def test_init_plugin_writes_just_the_settings_the_plugin_cannot_set(tmp_path, monkeypatch):
    from autoresearch.program import load_program
    from autoresearch.cli.plugin import STOP_CAP_KEY, missing_env
    proj = tmp_path / "proj"
    (proj / ".claude").mkdir(parents=True)
    shutil.copy(ROOT / "program.md", proj / "program.md")
    mine = {"permissions": {"deny": ["Bash(rm:*)"]}, "env": {"MY_VAR": "1", "BASH_MAX_TIMEOUT_MS": "99999999"}}
    (proj / ".claude" / "settings.json").write_text(json.dumps(mine))
    program = load_program(proj)
    assert len(missing_env(mine, program)) == 2                # the cap and the default timeout
    run = [str(ROOT / ".venv" / "bin" / "python"), "-m", "autoresearch", "init", "--plugin", "-C", str(proj)]
    p = subprocess.run(run, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    settings = json.loads((proj / ".claude" / "settings.json").read_text())
    assert settings["permissions"] == mine["permissions"] and "hooks" not in settings
    assert settings["env"]["MY_VAR"] == "1" and settings["env"]["BASH_MAX_TIMEOUT_MS"] == "99999999"  # never lowered
    assert settings["env"][STOP_CAP_KEY] == "1000" and int(settings["env"]["BASH_DEFAULT_TIMEOUT_MS"]) >= 780_000
    assert missing_env(settings, program) == []
    again = subprocess.run(run, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    # plugin-only mode seen from inside the plugin (slash commands run with CLAUDE_PLUGIN_ROOT set)
    from autoresearch.cli.doctor import check_hooks
    monkeypatch.setenv("CLAUDE_PLUGIN_ROOT", str(ROOT))
    checks = {c.name: c for c in check_hooks(proj, program)}
    assert checks["settings: plugin-only"].level == "ok"


def test_one_version_source():
    """autoresearch.__version__ is the version: pyproject reads it, plugin.json must equal it, the
    marketplace names none (the plugin's own manifest wins)."""
    from autoresearch import __version__
    assert json.loads((ROOT / ".claude-plugin" / "plugin.json").read_text())["version"] == __version__
    market = json.loads((ROOT / ".claude-plugin" / "marketplace.json").read_text())
    assert "version" not in market.get("metadata", {}) and all("version" not in p for p in market["plugins"])
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
    from importlib.metadata import version
    assert version("autoresearch") == __version__


def test_human_commands_are_for_humans_only():
    """Every slash command runs a human's command: the model may not invoke one by itself."""
    names = set()
    for md in (ROOT / "commands").glob("*.md"):
        front = md.read_text().split("---")[1]
        assert "disable-model-invocation: true" in front, md.name
        names.add(md.stem)
    assert {"status", "plot", "pause", "resume", "doctor", "final", "calibrate"} <= names


def test_the_plugin_icon_is_a_small_svg_the_manifest_names_and_the_pack_ships(tmp_path):
    """plugin.json's `icon` (checked by `claude plugin validate`'s directory checks) points at a
    real SVG inside the plugin, and scripts/pack-plugin.sh carries it."""
    import xml.etree.ElementTree as ET
    icon = json.loads((ROOT / ".claude-plugin" / "plugin.json").read_text())["icon"]
    assert icon.startswith("./") and icon.endswith(".svg")
    path = ROOT / icon
    assert path.is_file() and path.stat().st_size < 4096
    assert ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    market = tmp_path / "market"
    p = subprocess.run([str(ROOT / "scripts" / "pack-plugin.sh"), str(market)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (market / icon).read_bytes() == path.read_bytes()


def test_the_plugins_messages_name_the_plugins_own_fix():
    """A plain project with only the plugin has no scripts/bootstrap.sh and no .venv of ours: every
    message in the plugin's hooks names the plugin's own install script instead."""
    text = plugin_entry(load_settings(ROOT))
    assert "scripts/bootstrap.sh" in json.dumps(load_settings(ROOT)), "the bundle's own wiring names bootstrap.sh"
    assert "scripts/bootstrap.sh" not in text and ".venv is missing" not in text
    assert text.count('"$here"\'/scripts/plugin-deps.sh with CLAUDE_PLUGIN_DATA set') == 2   # Stop, SessionStart


@pytest.mark.parametrize("event, key", [("Stop", "stopReason"), ("SessionStart", "hookSpecificOutput")])
def test_without_any_python_the_plugins_loop_hooks_answer_valid_json_with_the_plugins_fix(tmp_path, event, key):
    """No interpreter anywhere: the Stop and SessionStart hooks still print well-formed JSON (their
    messages sit inside shell quotes) that names the plugin's own fix."""
    proj, plugin = tmp_path / "proj", tmp_path / "plugin"
    proj.mkdir()
    (proj / "program.md").write_text("---\n---\n")
    (plugin / "scripts").mkdir(parents=True)
    (plugin / "scripts" / "plugin-deps.sh").write_text("#!/bin/sh\nexit 1\n")
    (plugin / "scripts" / "plugin-deps.sh").chmod(0o755)
    shutil.copy(ROOT / ENTRY, plugin / ENTRY)
    [group] = plugin_hooks(load_settings(ROOT))["hooks"][event]
    env = {"PATH": "/usr/bin:/bin", "CLAUDE_PROJECT_DIR": str(proj), "CLAUDE_PLUGIN_ROOT": str(plugin),
           "CLAUDE_PLUGIN_DATA": str(tmp_path / "data")}
    p = subprocess.run(["sh", "-c", group["hooks"][0]["command"]], cwd=proj, env=env, capture_output=True, text=True,
                       input="{}", timeout=60)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    text = json.dumps(out)
    assert key in out and "plugin-deps.sh with CLAUDE_PLUGIN_DATA set" in text, (p.stdout, p.stderr)
    assert "bootstrap.sh" not in text and f"{plugin}/scripts/plugin-deps.sh" in text
