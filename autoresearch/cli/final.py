"""`autoresearch final`: score the best kept experiment once on the held-out TEST split.

Which model: every run keeps its checkpoint (runs/NNNN/out/model.pt) and the exact train.py
that produced it (runs/NNNN/train.py), so the final evaluation scores the very model the loop
kept -- no re-training, no new seed noise. A confirmed win (several runs) is scored on each
run's checkpoint and reported as the mean. The baseline (experiment 1) is scored the same way,
so the improvement can be read on data the loop never saw.

How: the same trusted EVAL stage as every experiment (the model server in a fresh sandbox,
no data mounted; the trusted scorer here, with its hidden checks), scoring the test split's
bytes instead of the validation bytes. To the model it is EVAL: the same folder names, the same
environment (the run's own budget and seed), the same mounts and protocol. What the model prints
goes to the final log in the project's state folder (layout.final_log), outside the project:
the human's only, never where the agent or a later TRAIN reads.

Once: the result is recorded in .autoresearch/final.json; asking again prints the record
instead of looking at the test split again (`--again` overrides, and says so in the record).
Deleting runs/ deletes the checkpoints, and with them the possibility of a final evaluation.
Before scoring, each checkpoint's run is checked against the keep commit it is scored for (the
train.py bytes and the editable-set snapshot): `final` never scores a model the commit did not keep.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from ..digest import sha256_bytes, sha256_file
from ..atomic import write_atomic
from ..program import Program, load_program
from ..ledger import LedgerRow, best_row, read_rows
from .status import shown_branch
from .jsonout import SCHEMA_VERSION

FINAL_FILE = "final.json"


class FinalError(RuntimeError):
    """A final evaluation cannot be made; the message says why and what to do."""


class Scored(BaseModel):
    run_id: str
    status: str                        # ok | invalid | crash | timeout | oom
    value: float | None
    reason: str | None = None
    eval_seconds: float | None = None


class Entry(BaseModel):
    """One ledger row scored on the test split."""
    experiment: int
    commit: str
    description: str
    val: float | None                  # what the loop measured on the validation split
    runs: list[Scored]

    @property
    def test(self) -> float | None:
        vals = [r.value for r in self.runs if r.status == "ok" and r.value is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(self.runs) else None


class FinalRecord(BaseModel):
    schema_version: int = SCHEMA_VERSION             # cli/jsonout.py: bumped when a field changes meaning
    branch: str
    metric: str
    direction: str
    split: str = "test"
    best: Entry
    baseline: Entry | None
    evaluated_at: datetime
    again: bool = False                # True when the test split had already been looked at

    def key(self) -> str:
        return f"{self.branch}:{','.join(r.run_id for r in self.best.runs)}"


def final_path(root: Path) -> Path:
    return root / ".autoresearch" / FINAL_FILE


def read_records(root: Path) -> list[FinalRecord]:
    try:
        raw = json.loads(final_path(root).read_text())
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise FinalError(f"{final_path(root)} is not valid JSON ({e}); move it aside to evaluate again") from None
    return [FinalRecord.model_validate(r) for r in raw]


def committed_code(root: Path, program: Program, commit: str) -> dict[str, bytes | None]:
    """The editable set's code files as committed at `commit` (what a keep measured): the model
    server builds the model from these, never from the work tree, which may have moved on."""
    from ..gitops import git, show_blob
    from ..record import code_files
    names = git(root, "ls-tree", "-r", "--name-only", "-z", commit).stdout.split("\0")
    files = code_files([n for n in names if n and program.editable_matches(n)] + [program.run.train_script])
    return {f: show_blob(root, commit, f) for f in files}


def score_run(root: Path, program: Program, run_id: str, split: str = "test", backend: str | None = None,
              commit: str | None = None) -> Scored:
    """One checkpoint scored once more by program.md's evaluator (registry.EVALUATORS), on
    `split`, with the `final` mounts and $AUTORESEARCH_STAGE=final; with `commit`, the model's code
    (the editable set) is that commit's, the code the checkpoint was trained with; eval.files are
    as committed at the base commit."""
    from ..record import HarnessError, Layout, final_log, new_log
    from ..run import EvalJob, data_folder, evaluator_of, frozen_code, measure
    from ..sandbox import choose_backend

    ev = evaluator_of(program)
    run_dir = root / "runs" / run_id
    lay = Layout(root, run_dir, program.run.train_script, committed_code(root, program, commit) if commit else {},
                 base=commit, outputs=tuple(program.run.outputs))
    if ev.script and not lay.out.is_dir():       # the built-in's measure names the file it misses
        raise FinalError(f"{lay.out} is missing: the final evaluation scores the kept run's own checkpoint "
                         f"(runs/ must not be deleted)")
    try:
        frozen = frozen_code(root, program)[1] if ev.script else None
    except HarnessError as e:
        raise FinalError(str(e)) from None
    sandbox = choose_backend(backend or program.sandbox.backend, image=program.sandbox.image)
    by = f" by {' '.join(program.eval.command)}" if program.eval else f" on the {split} split"
    log = new_log(final_log(root, run_id), f"final evaluation of run {run_id}{by}\n")
    try:
        lay.hold()
        job = EvalJob(sandbox, program, lay, _eval_env(sandbox, program, lay), log, "final",
                      data_folder(root) if ev.data else None, frozen, split)
        res, status, reason, value, _ = measure(job)
    except HarnessError as e:
        raise FinalError(str(e)) from None
    finally:
        lay.cleanup()
    if status == "ok" and value is not None and (why := program.metric.out_of_range(value)):
        status, reason, value = "invalid", why, None
    return Scored(run_id=run_id, status=status, value=value, reason=reason, eval_seconds=round(res.wall_seconds, 3))


def _eval_env(sandbox, program: Program, lay) -> dict[str, str]:
    """The environment the run's EVAL stage had: its own budget and seed (from its signed record),
    so nothing in it tells the model this is the final evaluation."""
    from ..record import read_verified
    from ..run import base_env, repo_env
    try:
        m = read_verified(lay.run_dir)
    except (OSError, ValueError) as e:
        raise FinalError(f"{lay.run_dir}/metrics.json cannot be read ({str(e).splitlines()[0]})") from None
    return repo_env(base_env(sandbox, lay, "/tmp", m.budget_seconds, m.seed), program, lay.root)


def check_identity(root: Path, program: Program, row: LedgerRow, run_id: str) -> None:
    """The checkpoint in runs/<run_id> must be the code the keep commit claims: its metrics name
    that run, its train.py copy hashes to what ran, the commit's train.py is those bytes, and the
    commit's Autoresearch-Snapshot is the run's snapshot. Otherwise a reused run id or a swapped
    folder would have `final` score the wrong model."""

    from ..gitops import git, show_blob, trailers
    from ..record import KEY_MISSING, read_verified
    d = root / "runs" / run_id
    ckpt = d / "out" / ("model.pt" if program.eval is None else "")     # eval_command: whatever TRAIN saved
    for need in (ckpt, d / Path(program.run.train_script).name):
        if not (need.is_file() or program.eval is not None and need == ckpt and need.is_dir()):
            raise FinalError(f"{need} is missing: the final evaluation scores the kept run's own checkpoint "
                             f"and train.py (runs/ must not be deleted)")
    try:
        m = read_verified(d)
    except (OSError, ValueError) as e:
        if str(e).startswith(KEY_MISSING):      # not damage: the key is elsewhere, and the fix is known
            raise FinalError(f"cannot verify kept run {run_id}: {e}") from None
        raise FinalError(f"runs/{run_id}/metrics.json cannot be read ({str(e).splitlines()[0]}): cannot tell "
                         f"which code the checkpoint is") from None
    script = program.run.train_script
    copy = d / Path(script).name
    got = sha256_file(copy)
    p = git(root, "rev-parse", "-q", "--verify", f"{row.commit}^{{commit}}", check=False)
    commit = p.stdout.strip()
    if p.returncode != 0 or not commit:
        raise FinalError(f"commit {row.commit} of experiment #{row.experiment} is not in this repository")
    blob = show_blob(root, commit, script)
    at_commit = sha256_bytes(blob)
    claimed = trailers(git(root, "log", "-1", "--format=%B", commit).stdout).get("Autoresearch-Snapshot")
    problems = []
    if m.run_id != run_id:
        problems.append(f"its metrics.json is run {m.run_id}")
    if got != m.train_py_sha256:
        problems.append(f"its {Path(script).name} copy does not hash to the {script} that ran")
    if at_commit != m.train_py_sha256:
        problems.append(f"{script} at {row.commit} is not the {script} that ran")
    if claimed and claimed != "none" and m.snapshot_sha256 and claimed != m.snapshot_sha256:
        problems.append(f"the commit claims snapshot {claimed[:12]}, the run is {m.snapshot_sha256[:12]}")
    if problems:
        raise FinalError(f"runs/{run_id} is not the checkpoint experiment #{row.experiment} ({row.commit}) kept: "
                         + "; ".join(problems) + ". Refusing to score the wrong model.")


def _entry(root: Path, program: Program, row: LedgerRow, backend: str | None) -> Entry:
    runs = row.runs or [row.run_id]
    for r in runs:
        check_identity(root, program, row, r)
    return Entry(experiment=row.experiment, commit=row.commit, description=row.description, val=row.value,
                 runs=[score_run(root, program, r, backend=backend, commit=row.commit) for r in runs])


def evaluate_final(root: Path, branch: str | None = None, again: bool = False, baseline: bool = True,
                   backend: str | None = None) -> tuple[FinalRecord, bool]:
    """(the record, whether it was evaluated now). Refuses inline mode: no trusted evaluator, no test split.
    With eval.command, that script scores the checkpoints again with the `final` mounts."""
    program = load_program(root)
    from ..run import evaluator_of
    if not evaluator_of(program).measure:
        raise FinalError("inline mode has no trusted evaluator and no held-out split: the metric is whatever the "
                         "training code prints, so there is nothing to evaluate once more")
    rows = read_rows(root)
    shown = shown_branch(root, rows, branch)
    rows = [r for r in rows if r.branch == shown] if shown else []
    best = best_row(rows, program.metric)
    if best is None:
        raise FinalError("no kept experiment yet: run the loop first (the baseline is the first keep)")
    records = read_records(root)
    key = f"{shown}:{','.join(best.runs or [best.run_id])}"
    done = [r for r in records if r.key() == key]
    if done and not again:
        return done[-1], False
    first = next((r for r in rows if r.status == "keep"), None)
    base = _entry(root, program, first, backend) if baseline and first is not None and first is not best else None
    rec = FinalRecord(branch=shown or "", metric=program.metric.name, direction=program.metric.direction,
                      best=_entry(root, program, best, backend), baseline=base,
                      evaluated_at=datetime.now(timezone.utc), again=bool(done))
    write_atomic(final_path(root), json.dumps([json.loads(r.model_dump_json()) for r in records + [rec]],
                                              indent=2) + "\n")
    return rec, True


def render(rec: FinalRecord, fresh: bool):
    from rich.table import Table
    t = Table(title=f"final evaluation on the held-out {rec.split} split ({rec.branch})")
    for c, kw in (("", {}), ("#", {"justify": "right"}), ("commit", {}), (f"{rec.metric} (val)", {"justify": "right"}),
                  (f"{rec.metric} ({rec.split})", {"justify": "right"}), ("runs", {}), ("description", {})):
        t.add_column(c, **kw)

    def fmt(v: float | None) -> str:
        return f"{v:.6f}" if v is not None else "-"
    for label, e in (("baseline", rec.baseline), ("best", rec.best)):
        if e is None:
            continue
        runs = ", ".join(f"{r.run_id}: {fmt(r.value) if r.status == 'ok' else r.status}" for r in e.runs)
        t.add_row(label, str(e.experiment), e.commit, fmt(e.val), fmt(e.test), runs, e.description,
                  style="bold green" if label == "best" else "")
    notes = []
    if rec.baseline and rec.baseline.test is not None and rec.best.test is not None:
        d = rec.best.test - rec.baseline.test
        notes.append(f"{rec.split} delta vs baseline: {d:+.6f}")
    for e in (rec.best, rec.baseline):
        for r in (e.runs if e else []):
            if r.status != "ok":
                notes.append(f"run {r.run_id}: {r.status}: {r.reason}")
    when = f"{rec.evaluated_at:%Y-%m-%d %H:%M} UTC"
    notes.append(("evaluated now" if fresh else "already evaluated") + f" ({when}); recorded in .autoresearch/final.json"
                 + ("" if fresh else ": `--again` looks at the test split once more"))
    if rec.again:
        notes.append("note: the test split had been looked at before for this result (--again)")
    t.caption = "\n".join(notes)
    return t


def main(root: Path, branch: str | None = None, again: bool = False, baseline: bool = True,
         backend: str | None = None, as_json: bool = False) -> int:
    from rich.console import Console
    console = Console()
    from ..record import HarnessError
    from ..sandbox import SandboxUnavailable
    try:
        rec, fresh = evaluate_final(root, branch=branch, again=again, baseline=baseline, backend=backend)
    except (FinalError, HarnessError, SandboxUnavailable) as e:
        console.print(f"autoresearch final: {e}", style="red")
        return 2
    if as_json:                                      # the same model as the table
        print(rec.model_dump_json(indent=2))
    else:
        console.print(render(rec, fresh))
        if fresh:
            from ..record import final_log
            for e in (rec.best, rec.baseline):
                for r in (e.runs if e else []):
                    console.print(f"what the model printed for run {r.run_id} (for you only): "
                                  f"{final_log(root, r.run_id)}", style="dim", soft_wrap=True)
    return 0 if rec.best.test is not None else 1
