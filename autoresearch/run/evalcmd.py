"""The EVAL stage of run.mode eval_command: the human's own evaluation script, frozen at init.

    what runs   eval.command, with eval.files as committed at the run branch's base commit
                (gitops.base_commit: the newest commit the loop did not make), mounted over the work
                tree's copies: an agent edit to the script in the work tree changes nothing.
    where       a fresh sandbox after TRAIN: no network, run in its own writable work copy of the
                snapshot (workcopy.py, in the state folder outside the project; eval.files in it as
                committed; gone when the stage ends), the project read-only (less what the flow
                table hides from eval.command), the TRAIN checkpoint ($AUTORESEARCH_OUT) read-only,
                the mounts declared for stage eval (or final), run.python and run.env as in TRAIN.
    the channel $AUTORESEARCH_METRIC_FILE, in the run's scratch (<state>/runs/NNNN/metric/, outside
                the project): made empty after TRAIN ended; read only by the host.
                The script writes {"value": <number>}; the host reads it (a regular file, at most
                64 KiB), validates it (EvalMetric) and the runner signs it. What the script or agent
                code prints goes to the eval log (the human's only, in the state folder); nothing
                printed becomes the metric.

What it does not guarantee: the script usually imports the agent's model code to load the
checkpoint, and that code then shares the eval process (README, "Threat model").
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ..program import Program
from ..sandbox import Mount, SandboxResult, SandboxSpec
from ..record import HarnessError, Layout, private_dir
from ..record.flows import EVAL_COMMAND
from .logs import log_tail
from .outcome import Wording, ended, ladder
from .specs import EVAL_NAME, StageInputs, StageSpec, python_of, shared_mounts, stage_spec
from .workcopy import put_file, remove_work_copy, work_copy

METRIC_DIR = "metric"                    # <state>/runs/NNNN/metric/: the eval script's channel
METRIC_FILE = "metric.json"
METRIC_MAX_BYTES = 64 << 10


class EvalMetric(BaseModel):
    """What the eval script writes to $AUTORESEARCH_METRIC_FILE: one finite number."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    value: float


def frozen_code(root: Path, program: Program) -> tuple[str, dict[str, bytes]]:
    """(the base commit, eval.files' bytes there). HarnessError, naming the fix, when a file is
    not committed there: the eval script never runs from the work tree."""
    from ..gitops import GitError, base_commit, show_blob
    try:
        base = base_commit(root)
    except (GitError, OSError) as e:
        raise HarnessError(f"eval.files: cannot read git history ({e})") from None
    if base is None:
        raise HarnessError("eval.files are read from the run branch's base commit, and this repository has no "
                           "commit: commit the eval script (git add eval.py && git commit)")
    files, missing = {}, []
    for rel in program.frozen_files():
        data = show_blob(root, base, rel)
        if data is None:
            missing.append(rel)
        else:
            files[rel] = data
    if missing:
        raise HarnessError(f"eval.files {', '.join(missing)} not committed at the base commit {base[:12]}: the eval "
                           f"script runs as committed, never from the work tree: git add {' '.join(missing)} "
                           f"&& git commit")
    return base, files


def evaluator_id(base: str, files: dict[str, bytes], program: Program) -> str:
    """For the fingerprint: the command and the frozen files' bytes (runs scored by two versions of
    the eval script are never compared)."""
    h = hashlib.sha256(" ".join(program.eval.command if program.eval else []).encode())
    if program.eval is not None and program.eval.model is not None:      # the split, its checks
        ev = program.eval
        h.update(f"\0{ev.model}\0{ev.checks}\0{ev.batch_independent}\0{ev.tolerance}".encode())
        if ev.compare:                                # how re-asks are judged (left out when undeclared: ids unchanged)
            h.update(f"\0{sorted(ev.compare.items())}".encode())
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return f"eval_command:{h.hexdigest()[:12]}"


def metric_channel(lay: Layout) -> Path:
    """The run's metric channel in its scratch (outside the project), made fresh after TRAIN."""
    d = lay.scratch / METRIC_DIR
    if d.is_symlink() or d.is_file():
        d.unlink()
    remove_work_copy(d)
    private_dir(lay.scratch)
    d.mkdir()
    return d


def eval_argv(python: str, program: Program) -> list[str]:
    """eval.command, its python made the sandbox's (run.python when set)."""
    argv = list(program.eval.command) if program.eval else []
    return [python if i == 0 and w in ("python", "python3") else w for i, w in enumerate(argv)]


def frozen_mounts(lay: Layout, frozen: dict[str, bytes]) -> list[Mount]:
    """eval.files' committed bytes, copied to the run's scratch, mounted over their project paths."""
    mounts = []
    for rel, data in sorted(frozen.items()):
        copy = lay.scratch / "frozen" / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(data)
        if not (lay.root / rel).is_file():
            raise HarnessError(f"eval.files: {rel} is missing from the project: restore it (git checkout -- {rel})")
        mounts.append(Mount(copy, str(lay.root / rel)))
    return mounts


@dataclass(frozen=True)
class ScriptRun:
    """The eval script's stage: eval.files' committed bytes, its metric channel and log, and the
    stage whose declared mounts it sees (eval, or final)."""
    frozen: dict[str, bytes]
    channel: Path
    log: Path
    stage: str = "eval"


def evalcmd_spec(inp: StageInputs, run: ScriptRun, work: Path | None = None) -> SandboxSpec:
    """The eval script's sandbox, run in `work` (its own writable copy of the snapshot, eval.files
    in it as committed at the base commit): the project read-only with eval.files replaced the same
    way, the checkpoint read-only, the `stage` mounts, the metric channel. Made here when None."""
    lay = inp.lay
    if work is None:
        work = work_copy(lay, f"{EVAL_NAME}-cmd")
    mounts, env = shared_mounts(inp, run.stage, EVAL_COMMAND, None)
    mounts += [Mount(lay.out, str(lay.out))] + frozen_mounts(lay, run.frozen)
    for rel, data in sorted(run.frozen.items()):
        put_file(work, rel, data)                  # the committed bytes, never the work tree's
    mounts += [Mount(work, str(work), writable=True), Mount(run.channel, str(run.channel), writable=True)]
    env.update({"PYTHONPATH": str(work), "AUTORESEARCH_METRIC_FILE": str(run.channel / METRIC_FILE),
                "AUTORESEARCH_STAGE": run.stage})
    return stage_spec(inp, StageSpec(argv=eval_argv(python_of(inp.sandbox, inp.program, lay.root), inp.program),
                                     mounts=mounts, env=env, cwd=work, log=run.log,
                                     timeout_s=inp.program.budget.eval_seconds))


def read_metric(channel: Path) -> tuple[float | None, str | None]:
    """(value, None) or (None, why) from the channel: a regular file (no link), small, {"value": n}."""
    path = channel / METRIC_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > METRIC_MAX_BYTES:
            return None, f"larger than {METRIC_MAX_BYTES} bytes"
        raw = os.read(fd, METRIC_MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return EvalMetric.model_validate_json(raw).value, None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return None, f"not {{\"value\": <finite number>}} ({where + ': ' if where else ''}{err['msg']})"


def _exception_type(log: Path) -> str:
    """The exception's type from the last traceback in the eval log (its message is not quoted:
    agent code ran in that process and could put held-out data in it)."""
    lines = log_tail(log, 60)
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    for ln in lines[starts[-1] + 1:] if starts else []:
        if ln.strip() and not ln.startswith((" ", "\t")):
            name = ln.split(":", 1)[0].strip()
            return name if name.replace(".", "").replace("_", "").isalnum() else ""
    return ""


def evalcmd_outcome(res: SandboxResult, value: float | None, problem: str | None, program: Program,
                    log: Path) -> tuple[str, str | None]:
    """(status, reason) of the eval script's stage. The process's end decides first: a metric
    written by a script that then failed is not a result."""
    what = f"the eval command ({' '.join(program.eval.command) if program.eval else 'eval.command'})"

    def crash(code: int | None) -> str:
        exc = _exception_type(log)
        return f"{what} {ended(code, 'was ')}" + (f" ({exc})" if exc else "") + \
            f"; its output is in {log.name} (for humans only)"

    if (out := ladder(res, Wording(
            what=what, memory_gb=program.sandbox.memory_gb, crash=crash,
            disk=f"{what} wrote more than {METRIC_MAX_BYTES * 16} bytes to its metric folder",
            timeout=f"{what} ran past eval_seconds {program.budget.eval_seconds:g} s"))) is not None:
        return out
    if problem == "missing":
        return "crash", (f"{what} exited 0 but wrote no metric: it must write "
                         f"{{\"value\": <number>}} to $AUTORESEARCH_METRIC_FILE")
    if problem is not None or value is None:
        return "invalid", f"the eval command's metric file is {problem}"
    return "ok", None
