"""Scenario 4b: the loop in a researcher's own, older repo, set up by `autoresearch init`, with
the bundle loaded as a plugin (`claude --plugin-dir`). The repo is the sample legacy project
(a numpy MLP that prints `val_acc=...`), so it runs in inline mode.

With init's wiring in the repo and the plugin loaded, the plugin's guard runs as a second
guard and its loop hooks step aside: every experiment is decided exactly once. The plugin's
`/autoresearch:status` then shows the night's table."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.fake_api import FakeAPI, end_turn, read, say
from e2e.harness import ROOT, VENV, Project, base_env, run_claude
from e2e.story import as_float, change, note, results, run_experiment, runs

pytestmark = [pytest.mark.claude, pytest.mark.usefixtures("sandbox")]

LEGACY = ROOT / "tests" / "fixtures" / "legacy_repo"
WIDER = ("HIDDEN = 16", "HIDDEN = 64")
FASTER = ("LR = 0.1", "LR = 0.3")
RELU = ("h = np.tanh(x @ w1 + b1)", "h = np.relu(x @ w1 + b1)")   # numpy has no relu: a crash


def legacy_project(dest: Path) -> Project:
    """The researcher's repo as they have it, then the setup steps init prints: init, commit."""
    repo, home = dest / "spiral", dest / "home"
    shutil.copytree(LEGACY, repo)
    (home / ".claude").mkdir(parents=True)
    (home / ".gitconfig").write_text("[user]\n\tname = E2E Researcher\n\temail = e2e@example.invalid\n")
    proj = Project(repo, home, base_env(home))

    def sh(*argv: str) -> str:
        p = subprocess.run(argv, cwd=repo, env=proj.env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{argv}: {p.stdout}\n{p.stderr}"
        return p.stdout

    sh("git", "init", "-q", "-b", "main")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "spiral MLP")
    sh(str(VENV / "bin" / "autoresearch"), "init", ".", "--command", "python train.py",
       "--metric", "val_acc", "--direction", "maximize", "--budget", "5")
    sh("git", "add", "program.md", "scratchpad.md", "run.sh", ".claude", ".gitignore")
    sh("git", "commit", "-qm", "autoresearch setup")
    return proj


def val_acc(source: str, tmp: Path) -> float:
    """What a version of train.py prints when run directly (deterministic: fixed seeds)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "train.py").write_text(source)
    out = subprocess.run([str(VENV / "bin" / "python"), "train.py"], cwd=tmp, capture_output=True,
                         text=True, check=True).stdout
    return float(re.findall(r"val_acc=([0-9.]+)", out)[-1])


def test_loop_in_an_initialised_legacy_repo_with_the_plugin(tmp_path: Path, claude_cli, bootstrapped) -> None:
    proj = legacy_project(tmp_path)
    base_src = proj.read("train.py")
    wide_src = base_src.replace(*WIDER)
    # What the metric will say, measured directly: the wider net wins, a higher LR on top loses.
    acc = {"base": val_acc(base_src, tmp_path / "a"), "wide": val_acc(wide_src, tmp_path / "b"),
           "fast": val_acc(wide_src.replace(*FASTER), tmp_path / "c")}
    assert acc["wide"] > acc["base"] and acc["fast"] < acc["wide"], f"the story no longer fits the fixture: {acc}"

    script = [
        say("This repo is new to me: scratchpad first, then the baseline.") + read("scratchpad.md"),
        run_experiment("baseline"),
        note("1 | baseline | the reference"),
        end_turn("Baseline measured."),
        say("Hypothesis: 64 hidden units separate the spirals better than 16.") + change(*WIDER),
        run_experiment("64 hidden units"),
        note("2 | HIDDEN=64 | more capacity for the spirals"),
        end_turn("Wider net measured."),
        say("Hypothesis: a higher learning rate converges within the epochs.") + change(*FASTER),
        run_experiment("LR 0.3"),
        note("3 | LR 0.3 | faster convergence?"),
        end_turn("Higher LR measured."),
        say("Hypothesis: ReLU hidden units train faster than tanh.") + change(*RELU),
        run_experiment("ReLU hidden units"),
        note("4 | ReLU | crashed: numpy has no relu; write it as np.maximum(0, .)"),
        end_turn("Crashed; noted the fix for later."),
    ]
    with FakeAPI(script, project=str(proj.root)) as fake:
        run = run_claude(proj, fake.url, "Follow program.md. Start now.", "--plugin-dir", str(ROOT),
                         env={"AUTORESEARCH_MAX_EXPERIMENTS": "4"}, timeout=300)
        assert run.result["subtype"] == "success" and not run.result["is_error"], run.describe()
        assert fake.overruns == 0 and max(r.step for r in fake.main_requests) == len(script) - 1, run.describe()
    init = next(e for e in run.events if e.get("type") == "system" and e.get("subtype") == "init")
    assert any(p["name"] == "autoresearch" for p in init["plugins"]), init["plugins"]
    assert run.result["permission_denials"] == [], "an allowed action needed approval"

    # Decided exactly once each, as the metric says.
    rows = results(proj.root, metric="val_acc")
    assert [r.status for r in rows] == ["keep", "keep", "discard", "crash"], rows
    assert [as_float(r.value) for r in rows[:3]] == pytest.approx([acc["base"], acc["wide"], acc["fast"]])
    assert rows[3].value == ""
    assert [m["status"] for m in runs(proj.root).values()] == ["ok", "ok", "ok", "crash"]
    assert all(m["mode"] == "inline" for m in runs(proj.root).values())
    assert "relu" in proj.read("runs/0004/train.log")

    # git: the researcher's branch untouched; the run branch holds the two keeps; the wide net is current.
    branch = proj.branch()
    assert branch.startswith("autoresearch/")
    assert proj.git("log", "--format=%s", "-1", "main").strip() == "autoresearch setup"
    kept = proj.git("log", "--format=%B%x00", "main..HEAD").split("\0")
    assert sum("Autoresearch-Run:" in m for m in kept) == 2
    assert proj.git("show", "HEAD:train.py") == wide_src == proj.read("train.py")
    assert "4 | ReLU" in proj.read("scratchpad.md")

    # The plugin's slash command shows the table to the model (and so to the researcher).
    with FakeAPI([end_turn("Two improvements kept; the best is the wider net.")], project=str(proj.root)) as fake:
        status = run_claude(proj, fake.url, "/autoresearch:status", "--plugin-dir", str(ROOT),
                            env={"AUTORESEARCH_MAX_EXPERIMENTS": "0"})
        shown = "\n".join(fake.shown())
    assert status.result["subtype"] == "success", status.describe()
    assert "val_acc" in shown and f"{acc['wide']:.4f}" in shown and branch in shown, shown[-3000:]
