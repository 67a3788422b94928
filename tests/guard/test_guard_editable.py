"""The guard's editable set: files, folders and globs of program.md, matched by the same function
that picks a run's snapshot (program.editable_regex / Program.editable_matches), through the real
hook command. Never-editable files stay denied whatever a pattern says; '..' never reaches out."""
from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.guard import paths
from autoresearch.editable import NEVER_EDITABLE, NEVER_EDITABLE_DIRS
from autoresearch.program import parse_program

from test_guard import ROOT, World


def _world(tmp_path: Path, editable: str) -> World:
    w = World(tmp_path, program=(ROOT / "program.md").read_text().replace(
        "editable: [train.py, scratchpad.md]", f"editable: {editable}"))
    for rel in ("model.py", "src/layers/attn.py", "src/data.py", "config/small.py", "config/sub/big.py",
                "conf/a.yaml", "conf/deep/b.yaml", "other.py"):
        (w.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (w.root / rel).write_text("x = 1\n")
    return w


def _edit(w: World, rel: str) -> str:
    got = w.tool("Edit", file_path="{root}/" + rel, old_string="1", new_string="2")
    return got.decision if got.decision == "allow" else f"deny: {got.reason}"


def test_files_folders_and_globs_decide_what_may_be_edited(tmp_path) -> None:
    w = _world(tmp_path, "[train.py, model.py, src/, 'config/*.py', '**/*.yaml']")
    program = parse_program((w.root / "program.md").read_text())
    for rel in ("model.py", "src/data.py", "src/layers/attn.py", "config/small.py", "conf/a.yaml",
                "conf/deep/b.yaml"):
        assert _edit(w, rel) == "allow", rel
        assert program.editable_matches(rel), rel            # the runner's answer is the guard's
    for rel in ("other.py", "config/sub/big.py", "README.md"):
        got = _edit(w, rel)
        assert got.startswith("deny") and "not editable" in got, (rel, got)
        assert not program.editable_matches(rel), rel


def test_never_editable_files_stay_denied_under_any_pattern(tmp_path) -> None:
    w = _world(tmp_path, "['**/*.py', '**/*.md', '*.sh', '**/*.json', '**/*.tsv']")
    program = parse_program((w.root / "program.md").read_text())
    assert _edit(w, "other.py") == "allow" and _edit(w, "src/layers/attn.py") == "allow"
    for rel in ("prepare.py", "program.md", "run.sh", "results.tsv", ".claude/settings.json",
                "hooks/loop_hook.py", "autoresearch/program.py", "runs/0001/train.py"):
        got = _edit(w, rel)
        assert got.startswith("deny"), (rel, got)
        assert not program.editable_matches(rel), rel


def test_dot_dot_never_leaves_or_reenters_the_project(tmp_path) -> None:
    w = _world(tmp_path, "[train.py, src/]")
    (tmp_path / "outside.py").write_text("x = 1\n")
    for path in ("{root}/src/../other.py", "{root}/src/../../outside.py", "{root}/../outside.py",
                 "{root}/src/../src/data.py"):
        got = w.tool("Edit", file_path=path, old_string="1", new_string="2")
        assert got.decision == "deny", (path, got)


@pytest.mark.parametrize("pattern", ["../x.py", "/etc/passwd", "src/../../x", "~/x.py", "runs/", "prepare.py",
                                     "hooks/*.py", ".claude/"])
def test_a_pattern_reaching_out_or_at_the_harness_denies_everything(tmp_path, pattern) -> None:
    w = _world(tmp_path, f"[train.py, '{pattern}']")
    got = w.tool("Edit", file_path="{root}/train.py", old_string="a", new_string="b")
    assert got.decision == "deny" and "editable" in got.reason and repr(pattern) in got.reason, got


def test_the_guard_and_the_program_agree_on_the_harness_files() -> None:
    assert set(NEVER_EDITABLE) == paths.NEVER_EDITABLE and set(NEVER_EDITABLE_DIRS) == paths.NEVER_EDITABLE_DIRS
