"""Issue 16's editable sets through the real Stop hook, in real git: a program whose `editable:`
holds a file, a glob and the train script. A keep commits exactly the measured snapshot of every
file of the set, a crash reverts every file, and runs of two different model.py are never
averaged (findings: an unmeasured model.py change committed; two model.py averaged as seeds)."""
from __future__ import annotations

import pytest

from loop_support import PROGRAM, Project

MODEL = "WIDTH = 64\nDEPTH = 2\n"
CONFIG = "lr = 3e-3\n"


@pytest.fixture
def proj(tmp_path) -> Project:
    text = PROGRAM.replace("editable: [train.py, scratchpad.md]",
                           "editable: [train.py, model.py, 'config/*.py', scratchpad.md]")
    p = Project.create(tmp_path / "proj", program=text)
    (p.path / "config").mkdir()
    (p.path / "model.py").write_text(MODEL)
    (p.path / "config" / "small.py").write_text(CONFIG)
    p.sh("git", "add", "-A")
    p.sh("git", "commit", "-q", "-m", "model and config")
    return p


def changed_files(p: Project, ref: str = "HEAD") -> set[str]:
    return set(p.git("show", "--format=", "--name-only", ref).splitlines())


def test_a_multi_file_change_is_kept_as_one_commit_of_every_file(proj):
    proj.baseline(2.0)
    proj.edit("WIDTH = 64", "WIDTH = 96", name="model.py")
    proj.edit("3e-3", "1e-2", name="config/small.py")
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9, desc="wider everywhere")
    patch = (proj.path / "runs" / rid / "diff.patch").read_text()
    assert "model.py" in patch and "config/small.py" in patch and "train.py" in patch
    r = proj.decide()
    assert "KEPT" in r.text, r
    assert changed_files(proj) == {"model.py", "config/small.py", "train.py", "scratchpad.md"}
    assert "WIDTH = 96" in proj.committed("model.py") and "1e-2" in proj.committed("config/small.py")
    assert proj.dirty() == []


def test_an_edit_after_the_run_is_never_committed_unmeasured(proj):
    proj.baseline(2.0)
    base = proj.rev()
    proj.edit("WIDTH = 64", "WIDTH = 96", name="model.py")
    measured = proj.fake_run(value=1.5)
    proj.edit("WIDTH = 96", "WIDTH = 128", name="model.py")          # after the run: not what was measured
    r = proj.decide()
    assert proj.rev() == base and "WIDTH = 64" in proj.committed("model.py"), r.text
    row = proj.rows()[-1]
    assert row.run_id == measured and row.status == "discard" and row.note.startswith("superseded")
    assert "WIDTH = 128" in proj.read("model.py")                     # newer work is left alone
    # a change in a file matched by the glob is a change of code too
    proj.edit("3e-3", "1e-2", name="config/small.py")
    kept = proj.fake_run(value=1.9)
    proj.edit("1e-2", "2e-2", name="config/small.py")
    proj.decide()
    assert proj.rev() == base and proj.rows()[-1].run_id == kept and proj.rows()[-1].status == "discard"
    # measured as it is: kept with exactly those bytes
    rid = proj.fake_run(value=1.9)
    assert "KEPT" in proj.decide().text and proj.rows()[-1].run_id == rid
    assert "WIDTH = 128" in proj.committed("model.py") and "2e-2" in proj.committed("config/small.py")


@pytest.mark.parametrize("status", ["crash", "timeout"])
def test_a_crash_reverts_every_file_of_the_set(proj, status):
    proj.baseline(2.0)
    head = proj.rev()
    proj.edit("WIDTH = 64", "WIDTH = 96", name="model.py")
    proj.edit("3e-3", "1e-2", name="config/small.py")
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(status=status)
    r = proj.decide()
    assert "REVERTED" in r.text.upper() or "CRASH" in r.text.upper(), r.text
    assert proj.rev() == head
    assert proj.read("model.py") == MODEL and proj.read("config/small.py") == CONFIG
    assert "N_EMBD = 64" in proj.read()
    assert [d for d in proj.dirty() if "scratchpad" not in d] == []
    kept = proj.path / ".autoresearch" / "reverted" / rid                 # nothing lost
    assert "WIDTH = 96" in (kept / "model.py").read_text() and "1e-2" in (kept / "config" / "small.py").read_text()


def test_runs_of_two_different_model_py_are_never_averaged(proj):
    proj.baseline(2.0)
    proj.edit("DEPTH = 2", "DEPTH = 3", name="model.py")
    first = proj.fake_run(value=1.98)
    assert "confirm" in proj.decide().text                            # a narrow win: run it again
    proj.edit("DEPTH = 3", "DEPTH = 4", name="model.py")               # ... but the model changed
    second = proj.fake_run(value=1.975)
    proj.stop()
    rows = proj.rows()
    assert not any(first in r.runs and second in r.runs for r in rows), [(r.run_id, r.runs) for r in rows]
    sup = next(r for r in rows if r.run_id == first)
    assert sup.status == "discard" and sup.note.startswith("superseded")
