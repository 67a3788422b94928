"""Every stage's mounts agree with the flow table (autoresearch/record/flows.py): each mount is classified
by its source into a place of the table, and the stage must be among that place's readers (among
its writers, for a writable mount); the project entries the table does not show a stage are
covered; no writable mount is where the agent reads. Real specs, built by the real code, for
TRAIN, an EVAL model server, `final`'s model server, and eval.command in EVAL and final."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autoresearch.record import flows as F
from autoresearch.program import load_program
from autoresearch.record.layout import Layout, inside, state_folder
from autoresearch.sandbox.bwrap import BwrapBackend

ROOT = Path(__file__).resolve().parents[2]


def _project(tmp: Path) -> tuple[Path, Path]:
    proj = tmp / "p"
    proj.mkdir()
    for f in ("program.md", "prepare.py", "train.py"):
        (proj / f).write_bytes((ROOT / f).read_bytes())
    (proj / "scratchpad.md").write_text("notes\n")
    (proj / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
    (proj / ".autoresearch").mkdir()
    (proj / ".autoresearch" / "final.json").write_text("[]\n")
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@t",
                                                               "commit", "-qm", "base")):
        subprocess.run(["git", *args], cwd=proj, check=True, capture_output=True)
    data = tmp / "data"
    for split in ("train", "val", "test"):
        (data / split).mkdir(parents=True)
        (data / split / f"{split}.bin").write_bytes(b"x" * 4096)
    return proj, data


def classify(m, lay: Layout, data: Path) -> str | None:
    """The flow a mount's source belongs to (None: the system's runtime or our trusted package)."""
    src, root, scratch = Path(m.source), lay.root, lay.scratch
    if src == root:
        return "other project files"
    if src == lay.out:
        return "checkpoint"
    if src == lay.script_copy:
        return "script copy"
    if inside(src, scratch / "work"):
        return "stage scratch"
    if inside(src, scratch / "metric"):
        return "metric channel"
    if inside(src, scratch):
        return "stage stand-ins"
    for split, name in (("train", "train split"), ("val", "validation split"), ("test", "test split")):
        if inside(src, data / split):
            return name
    assert not inside(src, root) and not inside(src, state_folder(root)), f"unclassified mount {m}"
    return None


def _specs(tmp: Path):
    from autoresearch.run.evalcmd import ScriptRun, evalcmd_spec, metric_channel
    from autoresearch.run.specs import ServerSlot, StageInputs, base_env, eval_spec, train_argv, train_spec
    proj, data = _project(tmp)
    program = load_program(proj)
    backend = BwrapBackend()
    lay = Layout(proj, proj / "runs" / "0001", "train.py", {"train.py": b"print(1)\n", "scratchpad.md": b"n\n"})
    lay.run_dir.mkdir(parents=True)
    lay.hold()
    lay.script_copy.write_bytes(b"print(1)\n")
    lay.out.mkdir()
    env = base_env(backend, lay, "/tmp", 5, 1)
    argv = train_argv(backend.runtime().python, program, lay, False)
    inp, log = StageInputs(backend, program, lay, env, data), lay.run_dir / "x.log"
    specs = {
        F.TRAIN: train_spec(inp, 5, argv),
        F.SERVER: eval_spec(inp, ServerSlot(None, log, "eval", 0)),
        F.FINAL: eval_spec(inp, ServerSlot(None, log, "final", 0)),
        F.EVAL_COMMAND: evalcmd_spec(inp, ScriptRun({}, metric_channel(lay), log)),
        F.FINAL + "-cmd": evalcmd_spec(inp, ScriptRun({}, metric_channel(lay), log, "final")),
    }
    return lay, data, specs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    lay, data, specs = _specs(tmp_path_factory.mktemp("flows"))
    yield lay, data, specs
    lay.cleanup()


@pytest.mark.parametrize("stage", [F.TRAIN, F.SERVER, F.FINAL, F.EVAL_COMMAND, F.FINAL + "-cmd"])
def test_each_mount_is_a_place_the_stage_may_read_or_write(built, stage):
    lay, data, specs = built
    actor = F.FINAL if stage.startswith(F.FINAL) else stage
    for m in specs[stage].mounts:
        name = classify(m, lay, data)
        if name is None:
            continue
        flow = F.BY_NAME[name]
        if inside(Path(m.target), lay.root) and Path(m.target) != lay.root and inside(Path(m.source), lay.scratch) \
                and name == "stage stand-ins":
            continue                                      # an empty stand-in or the snapshot's copy: hides, shows nothing new
        assert actor in flow.readers, f"{stage} is shown {name} ({m.source}), which the flow table does not let it read"
        if m.writable:
            assert actor in flow.writers, f"{stage} may write {name} ({m.source}), which the flow table forbids"
            assert not inside(Path(m.source), lay.root) or name == "checkpoint" and actor == F.TRAIN, m
            assert F.AGENT_READ not in flow.readers, f"{stage} writes where the agent reads: {m}"


@pytest.mark.parametrize("stage", [F.TRAIN, F.SERVER, F.FINAL, F.EVAL_COMMAND, F.FINAL + "-cmd"])
def test_what_the_table_hides_from_a_stage_is_covered(built, stage):
    lay, _, specs = built
    mirrored = {F.FINAL: F.SERVER, F.FINAL + "-cmd": F.EVAL_COMMAND}.get(stage, stage)   # final is EVAL to the model
    targets = {m.target: m for m in specs[stage].mounts}
    hidden = F.hidden_from(mirrored)
    assert ".autoresearch" in hidden
    for name in hidden:
        if (lay.root / name).exists():
            m = targets.get(str(lay.root / name))
            assert m is not None and inside(Path(m.source), lay.scratch) and not m.writable, (stage, name)
    assert str(lay.root / "runs") in targets, "runs/ is always the skeleton"


def test_final_looks_like_eval_to_the_model(built):
    """The same folder names, environment and mounts (but the ones declared per stage)."""
    _, _, specs = built
    for a, b in ((F.SERVER, F.FINAL), (F.EVAL_COMMAND, F.FINAL + "-cmd")):
        ev, fi = specs[a], specs[b]
        assert ev.cwd == fi.cwd and ev.argv == fi.argv
        assert sorted((m.target, m.writable) for m in ev.mounts) == sorted((m.target, m.writable) for m in fi.mounts)
        diff = {k for k in ev.env.keys() | fi.env.keys() if ev.env.get(k) != fi.env.get(k)}
        assert diff <= {"AUTORESEARCH_STAGE"}, diff     # eval.command alone is told (the human's script picks its split)
    assert "AUTORESEARCH_STAGE" not in specs[F.FINAL].env


def test_no_stage_scratch_is_inside_the_project(built):
    lay, _, specs = built
    assert not inside(lay.scratch, lay.root)
    for spec in specs.values():
        assert not inside(Path(spec.cwd), lay.root), spec.cwd
        for m in spec.mounts:
            if m.writable:
                assert not inside(Path(m.source), lay.root) or Path(m.source) == lay.out, m


def test_a_declared_home_never_shows_the_state_folder_or_the_keys(tmp_path, monkeypatch):
    """sandbox.home as the user's HOME (read-only, or writable in TRAIN) holds ~/.local/state and
    ~/.config: every stage gets an empty stand-in over the state folder (the eval logs) and the keys."""
    from autoresearch.run.specs import ServerSlot, StageInputs, eval_spec, base_env, train_argv, train_spec
    home = tmp_path / "home"
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    (home / ".local" / "state" / "autoresearch").mkdir(parents=True)
    (home / ".config" / "autoresearch" / "keys").mkdir(parents=True)
    proj, data = _project(tmp_path)
    for writable in (False, True):
        text = (proj / "program.md").read_text().replace(
            "  gpus: all", f"  gpus: all\n  home: {home}\n  home_writable: {str(writable).lower()}", 1)
        (proj / "program.md").write_text(text)
        program = load_program(proj)
        assert program.sandbox.home == str(home)
        backend = BwrapBackend()
        lay = Layout(proj, proj / "runs" / "0001", "train.py", {})
        lay.run_dir.mkdir(parents=True, exist_ok=True)
        env = base_env(backend, lay, "/tmp", 5, 1)
        inp = StageInputs(backend, program, lay, env, data)
        specs = [train_spec(inp, 5, train_argv("python", program, lay, False))]
        if not writable:
            specs.append(eval_spec(inp, ServerSlot(None, lay.run_dir / "x.log", "eval", 0)))
        for spec in specs:
            got = {m.target: m for m in spec.mounts}
            assert str(home) in got, "the home is shown"
            for private in (home / ".local" / "state" / "autoresearch", home / ".config" / "autoresearch"):
                m = got.get(str(private))
                assert m is not None and not m.writable and inside(m.source, lay.scratch), (private, spec.mounts)
        lay.cleanup()
        (proj / "program.md").write_text((ROOT / "program.md").read_text())
