"""Plugin-only, from an empty HOME: a researcher who never cloned the bundle installs the plugin
from a marketplace (the packed tree, as `scripts/pack-plugin.sh` makes it) with the real Claude
Code CLI, runs `/autoresearch:init` in a fresh repo of theirs, and the loop runs:
the baseline and one experiment are decided by the plugin's hooks (the project wires none), and
`/autoresearch:status` shows them.

The plugin's data folder is seeded with a venv whose site-packages is the test .venv's (and the stamp
scripts/plugin-deps.sh checks), so this test needs no network and no minute of pip; the real
install into that folder is test_plugin_data's. Nothing else of the bundle checkout is used: the
project names no path in it except the training interpreter (run.python, the `python` on PATH,
which has numpy, as a researcher's own venv would)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.fake_api import FakeAPI, end_turn, read
from e2e.harness import ROOT, VENV, Project, base_env, run_claude
from e2e.story import as_float, change, note, results, run_experiment, runs

pytestmark = [pytest.mark.claude, pytest.mark.usefixtures("sandbox")]

LEGACY = ROOT / "tests" / "fixtures" / "legacy_repo"
WIDER = ("HIDDEN = 16", "HIDDEN = 64")


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _install(tmp: Path, env: dict[str, str], claude: Path) -> Path:
    """marketplace add + plugin install of the packed tree; returns the installed plugin folder."""
    market = tmp / "market"
    p = subprocess.run([str(ROOT / "scripts" / "pack-plugin.sh"), str(market)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # a closed local port as the API: the plugin commands look up api.anthropic.com otherwise (18 s each offline)
    quick = {**env, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    for args in (("plugin", "marketplace", "add", str(market)), ("plugin", "install", "autoresearch@autoresearch")):
        p = subprocess.run([str(claude), *args], capture_output=True, text=True, timeout=120, env=quick)
        assert p.returncode == 0, p.stdout + p.stderr
    [plugin] = [h.parent.parent for h in (Path(env["CLAUDE_CONFIG_DIR"]) / "plugins" / "cache").rglob("hooks/hooks.json")]
    return plugin


def _seed_data_venv(plugin: Path, env: dict[str, str]) -> Path:
    """What plugin-deps.sh leaves in the data folder, made from the test .venv's packages."""
    venv = Path(env["CLAUDE_CONFIG_DIR"]) / "plugins" / "data" / "autoresearch-autoresearch" / "venv"
    subprocess.run([str(VENV / "bin" / "python"), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    shutil.rmtree(venv / site)                  # the hooks start with -S (no .pth): the packages themselves
    (venv / site).symlink_to(VENV / site)
    stamp = subprocess.run(["sh", "-c", "(cat \"$1\"; python3 -c 'import sys; print(sys.version)') | sha256sum | "
                            "cut -d' ' -f1", "-", str(plugin / "scripts" / "plugin-requirements.lock")],
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    (venv / ".autoresearch-deps").write_text(stamp + "\n")
    return venv


def test_plugin_only_from_an_empty_home(tmp_path: Path, claude_cli: Path) -> None:
    home, repo = tmp_path / "home", tmp_path / "spiral"
    (home / ".claude").mkdir(parents=True)
    (home / ".gitconfig").write_text("[user]\n\tname = E2E Researcher\n\temail = e2e@example.invalid\n")
    env = base_env(home)
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"     # the researcher's own python (numpy)
    plugin = _install(tmp_path, env, claude_cli)
    size = _tree_bytes(plugin)
    print(f"\ninstalled plugin: {size / 1e6:.2f} MB in {plugin}")
    assert size < 2_000_000 and not (plugin / ".venv").exists()
    _seed_data_venv(plugin, env)

    shutil.copytree(LEGACY, repo)
    proj = Project(repo, home, env)

    def sh(*argv: str) -> str:
        p = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{argv}: {p.stdout}\n{p.stderr}"
        return p.stdout

    sh("git", "init", "-q", "-b", "main")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "spiral MLP")
    init_args = '--command "python train.py" --metric val_acc --direction maximize --budget 5 --backend bwrap --no-check'
    with FakeAPI([end_turn("Set up; next: check it with /autoresearch:doctor.")], project=str(repo)) as fake:
        run = run_claude(proj, fake.url, f"/autoresearch:init {init_args}")     # the plugin's own slash command
        out = "\n".join(fake.shown())
    assert run.result["subtype"] == "success", run.describe()
    assert "autoresearch set up in" in out and "/autoresearch:doctor" in out, out[-3000:]
    settings = json.loads(proj.read(".claude/settings.json"))
    assert "hooks" not in settings, "plugin-only: the plugin's hooks decide, the project wires none"
    assert int(settings["env"]["CLAUDE_CODE_STOP_HOOK_BLOCK_CAP"]) >= 100 and "Bash(pip:*)" in settings["permissions"]["deny"]
    setup = "\n".join(proj.read(f) for f in ("run.sh", ".claude/settings.json", "program.md"))
    assert str(ROOT / "autoresearch") not in setup and str(ROOT / "hooks") not in setup     # no bundle checkout
    assert f"python: {VENV / 'bin' / 'python'}" in proj.read("program.md")
    sh("git", "add", "program.md", "scratchpad.md", "run.sh", ".claude", ".gitignore")
    sh("git", "commit", "-qm", "autoresearch setup")

    script = [
        read("scratchpad.md"),
        run_experiment("baseline"),
        note("1 | baseline | the reference"),
        end_turn("Baseline measured."),
        change(*WIDER),
        run_experiment("64 hidden units"),
        note("2 | HIDDEN=64 | more capacity"),
        end_turn("Wider net measured."),
    ]
    with FakeAPI(script, project=str(repo)) as fake:
        run = run_claude(proj, fake.url, "Follow program.md. Start now.",
                         env={"AUTORESEARCH_MAX_EXPERIMENTS": "2"}, timeout=300)
        assert run.result["subtype"] == "success" and not run.result["is_error"], run.describe() + "\n".join(str(r.text)[-1500:] for r in fake.results())
        assert fake.overruns == 0 and max(r.step for r in fake.main_requests) == len(script) - 1, run.describe()
    init = next(e for e in run.events if e.get("type") == "system" and e.get("subtype") == "init")
    assert any(p["name"] == "autoresearch" for p in init["plugins"]), init["plugins"]
    assert run.result["permission_denials"] == [], "an allowed action needed approval"
    rows = results(repo, metric="val_acc")
    assert [r.status for r in rows] in (["keep", "keep"], ["keep", "discard"]), rows
    assert all(as_float(r.value) is not None for r in rows)
    assert [m["status"] for m in runs(repo).values()] == ["ok", "ok"]
    assert sum("Autoresearch-Run:" in m for m in proj.git("log", "--format=%B%x00", "main..HEAD").split("\0")) \
        == [r.status for r in rows].count("keep")

    with FakeAPI([end_turn("Shown.")], project=str(repo)) as fake:
        status = run_claude(proj, fake.url, "/autoresearch:status", env={"AUTORESEARCH_MAX_EXPERIMENTS": "0"})
        shown = "\n".join(fake.shown())
    assert status.result["subtype"] == "success", status.describe()
    assert "val_acc" in shown and proj.branch() in shown, shown[-3000:]
