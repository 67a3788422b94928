"""`autoresearch init` runs the training command once, briefly, as ./run.sh will (real bwrap sandbox,
real runner) and says what the loop would see: the regex's lines or that none matched, an ignored
seed, CUDA needed with no GPU, a command that does not start. Plus numbered program.md backups and
the pip message a legacy repo gets from its wired guard."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from autoresearch.cli.doctor import _hook_input, wired_commands
from autoresearch.cli.init import BACKUP_SUFFIX, InitOptions, init_project
from autoresearch.cli.initcheck import check_project, render
from autoresearch.guard.cmdlang import hint
from autoresearch.sandbox import host_has_gpus

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SPIRAL = ("python train.py", "val_acc", "maximize")          # prints val_acc=...; its seed is hard-coded
TABLE = ("python train.py", "recall@1", "maximize")          # prints a table; reads AUTORESEARCH_SEED


def repo(tmp: Path, fixture: str) -> Path:
    root = tmp / fixture
    shutil.copytree(FIXTURES / fixture, root)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "legacy code"]):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True)
    return root


def init(root: Path, spec: tuple[str, str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    command, metric, direction = spec
    return subprocess.run([str(ROOT / ".venv" / "bin" / "autoresearch"), "init", "-C", str(root), "--command", command,
                           "--metric", metric, "--direction", direction, "--budget", "5", "--backend", "bwrap",
                           "--check-seconds", "10", *extra], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(root.parent),
                               **{k: os.environ[k] for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME") if k in os.environ}})


def checks(root: Path) -> list[dict]:
    folders = sorted(p for p in (root / ".autoresearch" / "checks").iterdir() if p.is_dir())
    return [json.loads((p / "metrics.json").read_text()) for p in folders]


def report(root: Path) -> dict:
    return json.loads((root / ".autoresearch" / "checks" / "report.json").read_text())


@pytest.mark.bwrap
def test_the_check_shows_the_matched_line_and_warns_that_the_seed_is_ignored(tmp_path, bwrap_available):
    root = repo(tmp_path, "legacy_repo")
    p = init(root, SPIRAL)
    assert p.returncode == 0, p.stdout + p.stderr                          # a warning is not a failure
    out = p.stdout
    assert "lines run.metric_regex matched:" in out and "> val_acc=0." in out
    assert "the seed is ignored" in out and "sigma = 0" in out and "AUTORESEARCH_SEED" in out
    assert "the seed is fixed at train.py:" in " ".join(out.split()) and "default=0" in out    # where (issue 29)
    [a, b] = checks(root)                                                  # two seeds, both check runs
    assert (a["purpose"], b["purpose"]) == ("check", "check") and a["seed"] != b["seed"]
    assert a["metric_value"] == b["metric_value"] is not None
    assert any("seed is ignored" in w for w in report(root)["warnings"])
    # nothing of it is an experiment: no runs/, no ledger, and the baseline is still run 0001
    assert not (root / "runs").exists() and not (root / "results.tsv").exists()
    base = subprocess.run(["./run.sh", "-m", "baseline"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "AUTORESEARCH_TRAIN_SECONDS": "5"})
    assert base.returncode == 0, base.stdout + base.stderr
    assert [d.name for d in (root / "runs").iterdir()] == ["0001"]


@pytest.mark.bwrap
def test_a_regex_that_never_matches_is_said_with_the_numeric_lines(tmp_path, bwrap_available):
    root = repo(tmp_path, "table_repo")
    p = init(root, TABLE)                                  # the default regex wants `recall@1=0.41`
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no line matched run.metric_regex: recall@1" in p.stdout
    assert "? | val   |" in p.stdout and "? epoch 2: loss" in p.stdout         # where the number really is
    assert "--metric-regex" in p.stdout and "seed check was skipped" in p.stdout
    assert len(checks(root)) == 1                           # no value: no second seed
    [run] = report(root)["runs"]
    assert run["matched"] == [] and run["value"] is None and len(run["numeric"]) == 5


@pytest.mark.bwrap
def test_a_matching_regex_and_a_seed_the_code_reads_pass(tmp_path, bwrap_available):
    root = repo(tmp_path, "table_repo")
    p = init(root, TABLE, "--metric-regex", r"\| val +\| +([0-9.]+)")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "> | val   |" in p.stdout and "check passed" in p.stdout and "warning" not in p.stdout
    rep = report(root)
    assert rep["warnings"] == [] and rep["failure"] is None
    first, second = rep["runs"]
    assert first["value"] != second["value"] and first["value"] == first["values"][-1]


@pytest.mark.bwrap
def test_code_that_needs_cuda_is_said_plainly(tmp_path, bwrap_available):
    root = repo(tmp_path, "table_repo")
    p = init(root, ("python train.py --device cuda",) + TABLE[1:])
    assert p.returncode == 0, p.stdout + p.stderr                          # it started: a warning
    assert "AssertionError: Torch not compiled with CUDA enabled" in p.stdout
    if host_has_gpus():
        assert "CUDA error although this machine has a GPU" in p.stdout
    else:
        assert "the code needs CUDA, and no GPU is visible on this machine" in p.stdout


@pytest.mark.bwrap
def test_a_command_that_does_not_start_fails_init(tmp_path, bwrap_available):
    root = repo(tmp_path, "table_repo")
    p = init(root, ("./no-such-launcher train.py",) + TABLE[1:])
    assert p.returncode == 1, p.stdout + p.stderr
    assert "check FAILED: the command did not start" in p.stdout and "No such file" in p.stdout
    assert (root / "program.md").is_file()                                # the setup is written all the same
    assert report(root)["failure"].startswith("the command did not start")


def test_no_check_runs_nothing(tmp_path):
    root = repo(tmp_path, "table_repo")
    p = init(root, TABLE, "--no-check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "check:" not in p.stdout and "seed" not in p.stdout
    assert not (root / ".autoresearch" / "checks").exists() and not (root / "runs").exists()


def test_each_force_backup_gets_its_own_numbered_file(tmp_path):
    root = repo(tmp_path, "legacy_repo")
    opts = dict(path=root, command=["python", "train.py"], metric="val_acc", direction="maximize", force=True)
    mine = ["my notes v1\n", "my notes v2\n", "my notes v3\n"]
    for i, text in enumerate(mine):
        (root / "program.md").write_text(text)
        res = init_project(InitOptions(budget_seconds=10 + i, **opts))
        assert res.backups[0] == "program.md" + BACKUP_SUFFIX + (f".{i}" if i else "")
    saved = [(root / ("program.md" + BACKUP_SUFFIX + (f".{i}" if i else ""))).read_text() for i in range(3)]
    assert saved == mine                                                  # none overwritten


def _hook_reason(root: Path, command: str) -> str:
    [(cmd, _)] = wired_commands(json.loads((root / ".claude" / "settings.json").read_text()), "PreToolUse", "Bash")
    p = subprocess.run(["bash", "-c", cmd], input=_hook_input(root, "Bash", {"command": command}), cwd=root,
                       capture_output=True, text=True, env={**os.environ, "CLAUDE_PROJECT_DIR": str(root)}, timeout=60)
    return p.stdout + p.stderr


def test_the_pip_message_in_a_legacy_repo_names_its_own_environment(tmp_path):
    root = repo(tmp_path, "legacy_repo")
    init_project(InitOptions(path=root, command=["python", "train.py"], metric="val_acc", direction="maximize"))
    python = json.loads((root / ".autoresearch" / "bundle.json").read_text())["python"]
    for command in ("pip install torch", "python -m pip install hydra-core"):
        why = _hook_reason(root, command)
        assert '"deny"' in why and "is disabled" in why, why
        assert python in why and "sandbox.image" in why and "scratchpad.md" in why and "container/" not in why
    assert "container/" in hint("pip install torch", "x", root=str(ROOT))   # the bundle itself has container/


@pytest.mark.bwrap
def test_code_that_ignores_the_budget_is_told_it_would_time_out(tmp_path, bwrap_available):
    root = repo(tmp_path, "table_repo")
    (root / "train.py").write_text("import time\nfor i in range(10**6):\n"
                                   "    print(f'step {i} loss {1 / (i + 1):.4f}', flush=True)\n    time.sleep(0.2)\n")
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "loop"],
                   check=True)
    p = init(root, ("python train.py", "loss", "minimize"), "--no-check")
    assert p.returncode == 0, p.stdout + p.stderr
    program = root / "program.md"                      # the program's grace bounds the check's: 2 s here
    program.write_text(program.read_text().replace("grace_seconds: 60", "grace_seconds: 2"))
    console = Console(record=True, width=200)
    render(check_project(root, 1), console)
    out = console.export_text()
    assert "did not finish within the check's 1 s" in out and "AUTORESEARCH_TRAIN_SECONDS" in out
    assert "last printed value" in out and "(not a result: timeout)" in out
    assert "> step " in out                                                # what it printed, matched
    assert [m["status"] for m in checks(root)] == ["timeout", "timeout"] and not (root / "runs").exists()


@pytest.mark.bwrap
def test_a_missing_module_names_the_environment_the_sandbox_trains_with(tmp_path, bwrap_available):
    root = repo(tmp_path, "table_repo")
    (root / "train.py").write_text("import hydra_pinned_by_this_repo\n")
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "hydra"],
                   check=True)
    p = init(root, TABLE)
    assert p.returncode == 0, p.stdout + p.stderr                          # it started: a warning
    python = json.loads((root / ".autoresearch" / "bundle.json").read_text())["python"]
    assert "needs the module 'hydra_pinned_by_this_repo'" in p.stdout
    assert f"{python} -m pip install NAME" in p.stdout and "sandbox.image" in p.stdout
    assert "container/" not in p.stdout


def test_a_legacy_repo_is_told_to_name_its_venv_and_to_mount_what_its_commands_read(tmp_path):
    from autoresearch.cli.initcheck import environment_fix, unseen_paths
    from autoresearch.program import parse_program
    root, held, data = tmp_path / "repo", tmp_path / "held", tmp_path / "data"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").write_text("")
    held.mkdir()
    (held / "val.txt").write_text("held-out")
    data.mkdir()
    front = (f"run: {{mode: eval_command, command: [python, train.py, 'data.root={data}', --x=/usr/share]}}\n"
             f"eval: {{command: [python, eval.py, --val, '{held / 'val.txt'}', --out, {root / 'out'}], "
             f"files: [eval.py]}}\n")
    prog = parse_program(f"---\n{front}---\n")
    fix = environment_fix(root, prog)
    assert "run.python: .venv/bin/python" in fix and "pip install" not in fix, fix
    found = unseen_paths(root, prog)
    assert len(found) == 2, found                       # not /usr/share, not a path in the project
    assert "the train command reads" in found[0] and f"mounts: [{{path: {data}, stages: [train]}}]" in found[0]
    assert "the eval command reads" in found[1] and f"mounts: [{{path: {held}, stages: [eval, final]}}]" in found[1]
    mounted = parse_program(f"---\n{front}mounts: [{{path: {data}, stages: [train]}}, "
                            f"{{path: {held}, stages: [eval]}}]\n---\n")
    assert unseen_paths(root, mounted) == []
    named = parse_program("---\n" + front.replace("mode: eval_command", "mode: eval_command, python: /opt/py/bin/python")
                          + "---\n")
    assert "run.python (/opt/py/bin/python)" in environment_fix(root, named)


@pytest.mark.bwrap
def test_doctor_trial_runs_init_s_check_again_after_program_md_changed(tmp_path, bwrap_available):
    """init --no-check, then the regex fixed by hand in program.md: `doctor --trial` runs the check
    with today's program.md (the table and --json), and records no experiment."""
    root = repo(tmp_path, "table_repo")
    p = init(root, TABLE, "--no-check")
    assert p.returncode == 0, p.stdout + p.stderr
    text = (root / "program.md").read_text()
    old = next(ln for ln in text.splitlines() if ln.strip().startswith("metric_regex:"))
    (root / "program.md").write_text(text.replace(old, old.split("metric_regex")[0]
                                                  + "metric_regex: '\\| val +\\| +([0-9.]+)'"))
    ar = [str(ROOT / ".venv" / "bin" / "autoresearch"), "doctor", "-C", str(root)]
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(root.parent)}
    p = subprocess.run(ar + ["--trial", "10"], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert "> | val   |" in p.stdout and "check passed" in p.stdout, p.stdout + p.stderr
    p = subprocess.run(ar + ["--json", "--trial", "10"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env=env)
    rep = json.loads(p.stdout)["trial"]
    assert rep["failure"] is None and len(rep["runs"]) == 2 and rep["runs"][0]["value"] is not None, rep
    assert not (root / "runs").exists() and not (root / "results.tsv").exists()


@pytest.mark.bwrap
def test_doctor_trial_is_not_ready_without_a_metric_and_uses_init_s_budget(tmp_path, bwrap_available):
    """Issue 29: a trial that started but timed out (or crashed) is not "ready", and a bare --trial
    runs at the budget init's check used (here 3 s), not a fixed 30 s."""
    root = tmp_path / "slow"
    root.mkdir()
    (root / "train.py").write_text("import time\nprint('start', flush=True)\ntime.sleep(600)\nprint('val=1.0')\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "legacy code"]):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True)
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(root.parent)}
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "autoresearch"), "init", "-C", str(root), "--command",
                        "python train.py", "--metric", "val", "--direction", "minimize", "--budget", "5",
                        "--backend", "bwrap", "--check-seconds", "3"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    assert report(root)["check_seconds"] == 3, p.stdout + p.stderr
    ar = [str(ROOT / ".venv" / "bin" / "autoresearch"), "doctor", "-C", str(root)]
    p = subprocess.run(ar + ["--json", "--trial"], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    rep = json.loads(p.stdout)
    assert p.returncode == 1 and rep["ready"] is False
    assert rep["trial"]["check_seconds"] == 3 and rep["trial"]["failure"] is None       # it started
    assert "no metric (timeout" in rep["trial_problem"]
    p = subprocess.run(ar + ["--trial"], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert p.returncode == 1 and "not ready: the trial produced no metric" in " ".join(p.stdout.split())
    assert "trial" in p.stdout.splitlines()[-1] and "ready" != p.stdout.splitlines()[-1].strip()
