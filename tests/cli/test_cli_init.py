"""`autoresearch init` on a small legacy repo (a script that prints its own metric), then one
experiment there: by run.sh, and by the real Claude Code CLI with the hooks init wired."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from autoresearch.program import load_program
from autoresearch.cli.doctor import _hook_input, run_hook, wired_commands
from autoresearch.ledger import read_rows
from autoresearch.record.metrics import RunMetrics
from autoresearch.cli.init import BACKUP_SUFFIX, InitError, InitOptions, init_project

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "legacy_repo"
PY = ROOT / ".venv" / "bin" / "python"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout


def legacy(tmp: Path, commit: bool = True) -> Path:
    root = tmp / "spiral"
    shutil.copytree(FIXTURE, root)
    git(root, "init", "-q", "-b", "main")
    if commit:
        git(root, "add", "-A")
        git(root, "commit", "-qm", "legacy code")
    return root


def opts(root: Path, **kw) -> InitOptions:
    base = dict(path=root, command=["python", "train.py"], metric="val_acc", direction="maximize", budget_seconds=5)
    return InitOptions(**(base | kw))


def init_cli(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "autoresearch"), "init", "-C", str(root), "--command",
                           "python train.py", "--metric", "val_acc", "--direction", "maximize", "--budget", "5",
                           *extra], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", "HOME": str(root.parent)})


def direct_val_acc(root: Path) -> float:
    out = subprocess.run([str(PY), "train.py"], cwd=root, capture_output=True, text=True, check=True).stdout
    return float(re.findall(r"val_acc=([0-9.]+)", out)[-1])


def test_init_writes_the_bundle_and_states_the_inline_guarantee(tmp_path):
    root = legacy(tmp_path)
    p = init_cli(root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "WEAKER guarantee" in p.stdout and "autoresearch final" in p.stdout
    for rel in ("program.md", "scratchpad.md", "run.sh", ".claude/settings.json", ".gitignore"):
        assert (root / rel).is_file(), rel
    prog = load_program(root)
    assert (prog.metric.name, prog.metric.direction, prog.run.mode) == ("val_acc", "maximize", "inline")
    assert prog.run.command == ["python", "train.py"] and prog.editable_patterns() == ["train.py", "scratchpad.md"]
    assert re.search(prog.run.metric_regex, "epoch 3\nval_acc=0.8125\n").group(1) == "0.8125"
    assert "WEAKER guarantee" in (root / "program.md").read_text()          # said in the file too
    assert (root / "run.sh").stat().st_mode & 0o111
    settings = json.loads((root / ".claude" / "settings.json").read_text())
    cmds = [c for ev in ("PreToolUse", "Stop", "SessionStart") for c, _ in wired_commands(settings, ev)]
    assert all(f"{ROOT}/hooks/" in c and "$CLAUDE_PROJECT_DIR/.venv" not in c for c in cmds)
    assert "Bash(pip:*)" in settings["permissions"]["deny"]
    assert {"runs/", "results.tsv", ".autoresearch/"} <= set((root / ".gitignore").read_text().split())
    assert git(root, "status", "--short", "train.py") == ""                 # the code itself is untouched


def test_the_wired_guard_in_the_legacy_repo_allows_the_loop_and_denies_the_rest(tmp_path):
    root = legacy(tmp_path)
    init_project(opts(root))
    [(cmd, _)] = wired_commands(json.loads((root / ".claude" / "settings.json").read_text()), "PreToolUse", "Bash")

    def decide(tool: str, inp: dict) -> str:
        return run_hook(cmd, root, _hook_input(root, tool, inp))
    assert decide("Bash", {"command": './run.sh -m "baseline"'}) == "allow"
    assert decide("Bash", {"command": "pip install torch"}) == "deny"
    assert decide("Bash", {"command": "python train.py"}) == "deny"              # runs only in the sandbox
    edit = {"old_string": "LR = 0.1", "new_string": "LR = 0.3"}
    assert decide("Edit", {"file_path": str(root / "train.py"), **edit}) == "allow"
    assert decide("Edit", {"file_path": str(root / "README.md"), **edit}) == "deny"
    assert decide("Edit", {"file_path": str(root / "program.md"), **edit}) == "deny"
    assert decide("Edit", {"file_path": str(root / "run.sh"), **edit}) == "deny"


def test_the_legacy_guard_denies_when_the_bundle_python_is_gone(tmp_path):
    root = legacy(tmp_path)
    init_project(opts(root))
    settings = (root / ".claude" / "settings.json").read_text().replace(str(ROOT / ".venv"), "/nonexistent/venv")
    [(cmd, _)] = wired_commands(json.loads(settings), "PreToolUse", "Bash")
    assert run_hook(cmd, root, _hook_input(root, "Bash", {"command": './run.sh -m "x"'})) == "deny"


def test_run_sh_says_what_to_do_when_the_bundle_python_is_gone(tmp_path):
    root = legacy(tmp_path)
    init_project(opts(root))
    text = (root / "run.sh").read_text().replace(str(PY), "/nonexistent/python")
    (root / "run.sh").write_text(text)
    p = subprocess.run(["./run.sh", "-m", "x"], cwd=root, capture_output=True, text=True)
    assert p.returncode == 2 and "is missing" in p.stderr and "init --force" in p.stderr
    assert not (root / "runs").exists()


@pytest.mark.parametrize("setup,kw,message", [
    ("nogit", {}, "is not a git repository"),
    ("nocommit", {}, "no commit yet"),
    ("ok", {"command": ["bash", "go.sh"]}, "pass --train-script"),
    ("ok", {"train_script": "missing.py"}, "does not exist"),
    ("ok", {"metric_regex": "val_acc=[0-9.]+"}, "needs one group"),
    ("ok", {"metric_regex": "val_acc=(["}, "not a valid regular expression"),
    ("ok", {"mode": "two_stage"}, "two_stage mode needs the trusted evaluator"),
])
def test_init_refuses_bad_input_and_writes_nothing(tmp_path, setup, kw, message):
    if setup == "nogit":
        root = tmp_path / "spiral"
        shutil.copytree(FIXTURE, root)
    else:
        root = legacy(tmp_path, commit=setup != "nocommit")
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(InitError, match=re.escape(message)):
        init_project(opts(root, **kw))
    assert sorted(p.name for p in root.iterdir()) == before


def test_untracked_training_script_is_refused(tmp_path):
    root = legacy(tmp_path)
    (root / "other.py").write_text("print('val_acc=1')\n")
    with pytest.raises(InitError, match="not committed"):
        init_project(opts(root, command=["python", "other.py"]))


def test_existing_files_are_kept_or_backed_up_never_lost(tmp_path):
    root = legacy(tmp_path)
    (root / "program.md").write_text("my own notes\n")
    (root / "scratchpad.md").write_text("my scratchpad\n")
    (root / ".claude").mkdir()
    (root / ".claude" / "settings.json").write_text(json.dumps({"model": "mine", "permissions": {"allow": ["Bash(make:*)"]}}))
    with pytest.raises(InitError, match="program.md already exists"):
        init_project(opts(root))
    assert (root / "program.md").read_text() == "my own notes\n"
    res = init_project(opts(root, force=True))
    assert (root / f"program.md{BACKUP_SUFFIX}").read_text() == "my own notes\n"
    assert (root / "scratchpad.md").read_text() == "my scratchpad\n" and "scratchpad.md" in res.kept
    merged = json.loads((root / ".claude" / "settings.json").read_text())
    assert merged["model"] == "mine" and merged["permissions"]["allow"] == ["Bash(make:*)"]
    assert "PreToolUse" in merged["hooks"]
    assert json.loads((root / ".claude" / f"settings.json{BACKUP_SUFFIX}").read_text())["model"] == "mine"


def test_init_twice_changes_nothing(tmp_path):
    root = legacy(tmp_path)
    init_project(opts(root))
    snapshot = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".git/" not in str(p)
                and "bundle.json" not in p.name}
    res = init_project(opts(root))
    assert {"program.md", "run.sh", ".claude/settings.json", ".gitignore"} <= set(res.kept)
    assert all(p.read_bytes() == b for p, b in snapshot.items())


def test_a_long_budget_raises_the_bash_timeout(tmp_path):
    root = legacy(tmp_path)
    init_project(opts(root, budget_seconds=3600))
    env = json.loads((root / ".claude" / "settings.json").read_text())["env"]
    assert int(env["BASH_MAX_TIMEOUT_MS"]) >= 3600_000 + 60_000 and int(env["BASH_DEFAULT_TIMEOUT_MS"]) >= 3600_000


@pytest.mark.bwrap
def test_one_experiment_runs_in_the_legacy_repo(tmp_path, bwrap_available):
    root = legacy(tmp_path)
    init_project(opts(root, sandbox="bwrap"))
    p = subprocess.run(["./run.sh", "-m", "baseline"], cwd=root, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "run 0001: ok" in p.stdout and "inline mode" in p.stdout
    m = RunMetrics.read(root / "runs" / "0001")
    assert m.status == "ok" and m.mode == "inline" and m.sandbox == "bwrap" and m.metric_name == "val_acc"
    assert m.metric_value == pytest.approx(direct_val_acc(root))
    assert (root / "runs" / "0001" / "train.py").read_text() == (root / "train.py").read_text()


@pytest.mark.claude
@pytest.mark.bwrap
def test_claude_code_runs_one_experiment_in_the_legacy_repo_and_the_stop_hook_keeps_it(tmp_path, bwrap_available):
    from conftest import need
    from e2e.fake_api import FakeAPI, bash, edit, end_turn, say
    from e2e.harness import Project, base_env, cli_path, run_claude
    need("claude", cli_path() is not None, "no Claude Code CLI")
    root = legacy(tmp_path)
    init_project(opts(root, sandbox="bwrap"))
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".gitconfig").write_text("[user]\n\tname = R\n\temail = r@example.invalid\n")
    proj = Project(root, home, base_env(home))
    script = [
        say("Baseline first.") + bash('./run.sh -m "baseline"', timeout=600_000),
        edit("scratchpad.md", "(none yet: the first run is the baseline)", "baseline val_acc, run 0001"),
        end_turn("Baseline recorded."),
        end_turn("Budget spent."),
    ]
    with FakeAPI(script, project=str(root)) as api:
        run = run_claude(proj, api.url, "go", env={"AUTORESEARCH_MAX_EXPERIMENTS": "1"}, timeout=300)
    ran = next(r for r in api.results() if r.name == "Bash")
    assert not ran.is_error and "run 0001: ok" in ran.text, run.describe()
    rows = read_rows(root)
    assert len(rows) == 1, run.describe()
    row = rows[0]
    assert row.status == "keep" and row.value == pytest.approx(direct_val_acc(root)) and row.run_id == "0001"
    assert row.branch.startswith("autoresearch/")
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == row.branch
    assert "val_acc" in (root / "results.tsv").read_text().splitlines()[0]


def test_init_takes_the_common_flags_and_keeps_the_old_spellings(tmp_path):
    """-C/--project and --backend, as in every other command; `init PATH` and --sandbox still work."""
    exe = str(ROOT / ".venv" / "bin" / "autoresearch")
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)}
    help_text = subprocess.run([exe, "init", "--help"], capture_output=True, text=True, env=env).stdout
    assert "--project DIR" in help_text and "-C" in help_text and "--backend" in help_text
    assert "--sandbox" not in help_text and "PATH" not in help_text        # hidden aliases
    base = ["--command", "python train.py", "--metric", "val_acc", "--direction", "maximize", "--budget", "5"]
    new = legacy(tmp_path / "new")
    p = subprocess.run([exe, "init", "-C", str(new), "--backend", "bwrap", *base], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert load_program(new).sandbox.backend == "bwrap" and "deprecated" not in p.stderr
    old = legacy(tmp_path / "old")
    p = subprocess.run([exe, "init", str(old), "--sandbox", "docker", *base], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert load_program(old).sandbox.backend == "docker"
    assert "--sandbox is deprecated, use --backend" in p.stderr and "positional PATH is deprecated" in p.stderr


def test_init_editable_sets_files_folders_and_globs(tmp_path):
    """`init --editable` (repeatable) writes them into editable:, the train script and the
    scratchpad kept; the guard's and the runner's matcher then agree on them."""
    root = legacy(tmp_path, commit=False)
    for rel in ("model.py", "config/small.py", "config/big.py", "src/layers.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "legacy code")
    p = init_cli(root, "--no-check", "--editable", "model.py", "--editable", "config/*.py", "--editable", "src/")
    assert p.returncode == 0, p.stdout + p.stderr
    prog = load_program(root)
    assert prog.editable_patterns() == ["train.py", "model.py", "config/*.py", "src/", "scratchpad.md"]
    assert prog.editable_files(root) == ["config/big.py", "config/small.py", "model.py", "scratchpad.md",
                                         "src/layers.py", "train.py"]
    assert "`model.py`" in prog.body and "`config/*.py`" in prog.body       # the agent is told what it may edit


@pytest.mark.parametrize("pattern, words", [("conf/*.yaml", "matches no file"), ("../other.py", "relative"),
                                            ("prepare.py", "never editable"), ("hooks/", "never editable")])
def test_init_editable_refuses_a_bad_pattern_and_writes_nothing(tmp_path, pattern, words):
    root = legacy(tmp_path)
    p = init_cli(root, "--no-check", "--editable", pattern)
    assert p.returncode == 2 and words in p.stdout and pattern in p.stdout, p.stdout + p.stderr
    assert not (root / "program.md").exists()


def test_plugin_wiring_replaces_a_bundle_wiring_and_its_run_sh_finds_the_installed_plugin(tmp_path, monkeypatch):
    """init --plugin after a bundle-mode init: the project's autoresearch hooks go (the plugin's
    decide, once), the user's own hook stays, run.python is the repo's .venv. run.sh takes the
    plugin from the config folder's plugin cache at run time, and without one says how to install."""
    root = legacy(tmp_path)
    init_project(opts(root))
    settings = root / ".claude" / "settings.json"
    mine = {"type": "command", "command": "notify-send done"}
    s = json.loads(settings.read_text())
    s["hooks"]["Stop"].append({"hooks": [mine]})
    settings.write_text(json.dumps(s))
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(PY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CLAUDE_PLUGIN_ROOT", raising=False)
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    with pytest.raises(InitError, match="not installed and enabled"):      # no plugin: no guard at all
        init_project(opts(root, wiring="plugin", force=True))
    monkeypatch.setenv("CLAUDE_PLUGIN_ROOT", str(ROOT))
    res = init_project(opts(root, wiring="plugin", force=True))
    assert res.wiring == "plugin"
    s = json.loads(settings.read_text())
    assert s["hooks"] == {"Stop": [{"hooks": [mine]}]} and "Bash(pip:*)" in s["permissions"]["deny"]
    assert int(s["env"]["CLAUDE_CODE_STOP_HOOK_BLOCK_CAP"]) >= 100
    assert load_program(root).run.python == ".venv/bin/python"
    cfg = tmp_path / "cfg"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLAUDE_CONFIG_DIR": str(cfg)}
    (root / "run.sh").write_text((root / "run.sh").read_text().replace(str(ROOT), "/nonexistent"))   # moved away
    p = subprocess.run(["./run.sh", "--help"], cwd=root, capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "claude plugin install autoresearch@" in p.stderr, p.stderr
    plugin, data = cfg / "plugins" / "cache" / "m" / "autoresearch" / "0.2.0", cfg / "plugins" / "data" / "autoresearch-m"
    plugin.parent.mkdir(parents=True)
    plugin.symlink_to(ROOT)
    (data / "venv" / "bin").mkdir(parents=True)
    (data / "venv" / "bin" / "python").symlink_to(PY)
    p = subprocess.run(["./run.sh", "--help"], cwd=root, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "--message" in p.stdout, p.stderr
