"""The installed plugin keeps its Python dependencies in Claude Code's per-plugin data folder
(${CLAUDE_PLUGIN_DATA}), never in the plugin folder: the SessionStart hook installs them on first
use (scripts/plugin-deps.sh), the guard never installs anything (no interpreter is a deny that
names the fix), and scripts/autoresearch installs them for the first slash command."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from autoresearch.cli.doctor import _hook_input, run_hook
from autoresearch.cli.wiring import load_settings, plugin_hooks
from e2e.fake_api import FakeAPI, bash, edit, end_turn
from e2e.harness import base_env

ROOT = Path(__file__).resolve().parents[2]


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _guard_command() -> str:
    [cmd] = [h["command"] for g in plugin_hooks(load_settings(ROOT))["hooks"]["PreToolUse"] for h in g["hooks"]]
    return cmd


def _project(tmp: Path) -> Path:
    proj = tmp / "proj"
    proj.mkdir()
    for f in ("program.md", "train.py", "scratchpad.md"):
        shutil.copy(ROOT / f, proj / f)
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    return proj


def test_the_guard_never_installs_and_denies_with_the_fix(tmp_path):
    """No interpreter anywhere (no data venv, no plugin or project .venv): a deny in well under a
    second that says how to install, and the data folder stays untouched (no pip on the hot path)."""
    proj, data = _project(tmp_path), tmp_path / "data"
    data.mkdir()
    plugin = tmp_path / "plugin"
    shutil.copytree(ROOT / "hooks", plugin / "hooks")
    shutil.copytree(ROOT / "scripts", plugin / "scripts")
    env = {**os.environ, "CLAUDE_PROJECT_DIR": str(proj), "CLAUDE_PLUGIN_ROOT": str(plugin),
           "CLAUDE_PLUGIN_DATA": str(data)}
    t = time.monotonic()
    p = subprocess.run(["sh", "-c", _guard_command()], input=_hook_input(proj, "Bash", {"command": "ls"}),
                       capture_output=True, text=True, cwd=proj, env=env)
    assert p.returncode == 2 and time.monotonic() - t < 2
    assert "plugin-deps.sh" in p.stderr and "denied" in p.stderr
    assert list(data.iterdir()) == []


def test_plugin_requirements_follow_pyproject():
    """Each package the plugin installs is a dependency of the package, under the same name."""
    deps = re.findall(r'^\s*"([A-Za-z0-9_.-]+)[<>=!~]', (ROOT / "pyproject.toml").read_text(), re.M)
    reqs = [re.split(r"[<>=!~]", line)[0].strip() for line in (ROOT / "scripts" / "plugin-requirements.txt")
            .read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert reqs and set(reqs) <= set(deps), set(reqs) - set(deps)
    assert "torch" not in reqs and "claude-agent-sdk" not in reqs


@pytest.mark.claude
def test_installed_plugin_carries_no_venv_and_its_hooks_find_their_deps_in_the_data_folder(claude_cli, tmp_path):
    """The real CLI: marketplace add of the packed tree, install, then a session in a project with
    no .venv. The cache copy has no .venv/runs/results.tsv; SessionStart installs the deps into
    ~/.claude/plugins/data/autoresearch-autoresearch/venv; the guard then decides with them (pip
    denied by the guard's own message, the scratchpad edit allowed); scripts/autoresearch uses them too."""
    market, home = tmp_path / "market", tmp_path / "home"
    p = subprocess.run([str(ROOT / "scripts" / "pack-plugin.sh"), str(market)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (home / ".claude").mkdir(parents=True)
    env = base_env(home)
    quick = {**env, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}     # else each looks up api.anthropic.com: 18 s offline
    for args in (("plugin", "marketplace", "add", str(market)), ("plugin", "install", "autoresearch@autoresearch")):
        p = subprocess.run([str(claude_cli), *args], capture_output=True, text=True, timeout=120, env=quick)
        assert p.returncode == 0, p.stdout + p.stderr
    cache = home / ".claude" / "plugins" / "cache"
    [plugin] = [h.parent.parent for h in cache.rglob("hooks/hooks.json")]
    for absent in (".venv", "runs", "results.tsv", "tests", ".autoresearch"):
        assert not (plugin / absent).exists(), absent
    assert (plugin / "scripts" / "plugin-deps.sh").is_file()
    assert _tree_bytes(cache) < 2_000_000, _tree_bytes(cache)
    proj = _project(tmp_path)
    script = [bash("pip install requests"),
              edit("scratchpad.md", "(none yet: the first run is the baseline)", "(plugin data test)"),
              end_turn("Done.")]
    with FakeAPI(script, project=str(proj)) as api:
        e = {**env, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test", "AUTORESEARCH_MAX_EXPERIMENTS": "0"}
        p = subprocess.run([str(claude_cli), "-p", "go", "--output-format", "json"], cwd=proj, env=e,
                           capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    data = home / ".claude" / "plugins" / "data" / "autoresearch-autoresearch"
    py = data / "venv" / "bin" / "python"
    assert py.is_file() and (data / "venv" / ".autoresearch-deps").is_file()
    assert subprocess.run([str(py), "-c", "import pydantic, yaml, rich, filelock"]).returncode == 0
    assert not (plugin / ".venv").exists() and not (proj / ".venv").exists()
    res = {r.input.get("command") or r.input.get("file_path"): r for r in api.results()}
    assert res["pip install requests"].is_error and "pip is disabled" in res["pip install requests"].text
    assert not res[str(proj / "scratchpad.md")].is_error, res[str(proj / "scratchpad.md")].text
    assert "(plugin data test)" in (proj / "scratchpad.md").read_text()
    # the first slash command's helper finds the same deps (and installs nothing more)
    st = subprocess.run([str(plugin / "scripts" / "autoresearch"), "status", "--json"], cwd=proj, capture_output=True,
                        text=True, env={**env, "CLAUDE_PLUGIN_DATA": str(data), "CLAUDE_PROJECT_DIR": str(proj)})
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["metric"] == "val_bpb"
    # Claude Code runs a slash command's shell without CLAUDE_PLUGIN_DATA: the helper finds the data
    # folder where the CLI keeps it (its config folder), and still installs nothing
    st = subprocess.run([str(plugin / "scripts" / "autoresearch"), "status", "--json"], cwd=proj, capture_output=True,
                        text=True, env={**env, "CLAUDE_PROJECT_DIR": str(proj)})
    assert "CLAUDE_PLUGIN_DATA" not in env and st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["metric"] == "val_bpb" and "installing" not in st.stderr
