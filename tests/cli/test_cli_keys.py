"""Issue 25, end to end: keys belong to the project, not its path or HOME. A project with a kept run
(real training under bwrap, decided by the real Stop hook) is copied with `cp -a` to another path
and used under another HOME: `autoresearch final` names the missing key and its fix; after `keys
export` there and `keys import` here, `final` scores the best."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import loop
from autoresearch.cli.final import read_records
from autoresearch.ledger import read_rows
from autoresearch.record.metrics import RunMetrics
from autoresearch.run.runner import RunOptions, run_experiment

ROOT = Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def cli(root: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=root, env=env, input=stdin,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_copied_project_under_another_home_scores_its_best_once_the_key_is_imported(tmp_path, data_dir,
                                                                                         bwrap_available):
    import prepare
    root = tmp_path / "a" / "proj"
    root.mkdir(parents=True)
    for f in ("program.md", "prepare.py", "train.py", "scratchpad.md", ".gitignore"):
        shutil.copy(ROOT / f, root / f)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "base")
    m = run_experiment(root, "baseline", RunOptions(budget=2, seed=1, backend="bwrap"))
    assert m.status == "ok", m.reason
    with open(root / "scratchpad.md", "a") as f:
        f.write("\n- baseline measured\n")
    reply = loop.stop_hook({"session_id": "s", "cwd": str(root), "hook_event_name": "Stop"})
    assert "BASELINE" in reply.get("reason", ""), reply
    [row] = read_rows(root)
    assert row.status == "keep" and row.run_id == m.run_id
    kid = RunMetrics.read(root / "runs" / m.run_id).key_id
    assert kid

    copy = tmp_path / "b" / "elsewhere"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(root), str(copy)], check=True)
    home = tmp_path / "home2"
    home.mkdir()
    other = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(home),      # another HOME: no key there
             "AUTORESEARCH_CACHE": str(prepare.CACHE_DIR)}                       # (the data cache is shared)

    p = cli(copy, other, "final", "--backend", "bwrap")
    assert p.returncode != 0
    said = p.stdout + p.stderr
    assert f"signing key {kid}" in " ".join(said.split()) and "keys import" in said, said
    assert "altered" not in said.replace("nothing was altered", "") and "Traceback" not in said
    assert not read_records(copy)

    here = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    exported = cli(root, here, "keys", "export")
    assert exported.returncode == 0 and kid in json.loads(exported.stdout)["keys"], exported.stderr
    imp = cli(copy, other, "keys", "import", "-", stdin=exported.stdout)
    assert imp.returncode == 0 and kid in imp.stdout, imp.stderr
    assert (home / ".config" / "autoresearch" / "keys").is_dir()

    p = cli(copy, other, "final", "--backend", "bwrap")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "held-out test split" in p.stdout
    [rec] = read_records(copy)
    assert rec.best.experiment == row.experiment and rec.best.runs[0].run_id == m.run_id
    assert rec.best.test is not None and 0.5 < rec.best.test < 8.5      # bits per byte of a real model
