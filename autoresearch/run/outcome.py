"""The outcome ladder: what a stage's sandbox result (and the scorer's result) mean for the run,
as (status, reason). One ladder for every caller: the runner's TRAIN and EVAL stages, eval.command,
the evaluator split and `autoresearch final`.

    ladder  any stage's sandbox result, in that stage's Wording: disk limit > start-up timeout >
            timeout > oom > exit code > ok (TRAIN, EVAL's model servers, eval.command, the split's
            servers)
    TRAIN   the ladder; a crash quotes the line that ended the traceback
    EVAL    the scorer's verdict, unless the server vanished first: then the ladder
    inline  the last match of run.metric_regex in the log, or a crash when there is none
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..program import Program
from ..program.sections import save_margin
from ..sandbox import SandboxResult
from ..record import EVAL_LOG
from .logs import log_tail

INLINE_WARNING = ("inline mode: the metric was printed by the training code itself, "
                  "not measured by the trusted evaluator")


def _exception_line(lines: list[str]) -> str:
    """The line that ends the last traceback (stdout and stderr are separate pipes, so lines
    printed before a crash can land after its traceback: seen with docker); else the last
    unindented line."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if starts:
        for ln in lines[starts[-1] + 1:]:
            if ln.strip() and not ln.startswith((" ", "\t")):
                return ln
    return next((ln for ln in reversed(lines) if ln.strip() and not ln.startswith(" ")), "")


def ended(code: int | None, was: str = "") -> str:
    """How a process ended, in words: "killed by signal 9" (was="was ": "was killed by ...") or
    "exited with code 3"."""
    return f"{was}killed by signal {code - 128}" if code is not None and code > 128 else f"exited with code {code}"


@dataclass(frozen=True)
class Wording:
    """How one stage's sandbox end reads for the agent: `what` names the process; the sentences the
    stage's own limits need. A sentence left empty is a check the stage does not make."""
    what: str                                   # "train.py", "the eval command (python eval.py)"
    timeout: str                                # killed at its time limit
    memory_gb: float                            # sandbox.memory_gb, said on oom
    crash: Callable[[int | None], str]          # the exit code -> the reason
    oom_tail: str = ""                          # after "went over the memory limit (N GB)"
    disk: str = ""                              # killed for writing more than its disk limit
    startup: str = ""                           # the trusted start-up ran past its grace
    ok_codes: tuple[int | None, ...] = (0,)     # exit codes that are no failure; (): any end is one


def ladder(res: SandboxResult, w: Wording) -> tuple[str, str] | None:
    """The one ladder from a sandbox result to (status, reason), for every stage: disk limit >
    start-up timeout > timeout > oom > exit code; None when the process ended well."""
    if res.disk_exceeded and w.disk:
        return "crash", w.disk
    if res.startup_timed_out and w.startup:
        return "timeout", w.startup
    if res.timed_out:
        return "timeout", w.timeout
    if res.oom:
        return "oom", f"{w.what} went over the memory limit ({w.memory_gb:g} GB){w.oom_tail}"
    if res.exit_code not in w.ok_codes:
        return "crash", w.crash(res.exit_code)
    return None


def train_status(res: SandboxResult, program: Program, budget: float, log: Path, what: str) -> tuple[str, str | None]:
    def crash(code: int | None) -> str:
        last = _exception_line(log_tail(log, 40))
        return f"{what} {ended(code)}" + (f": {last[:200]}" if last else "")

    return ladder(res, Wording(
        what=what, memory_gb=program.sandbox.memory_gb, crash=crash, oom_tail=" and was killed",
        disk=(f"disk limit: {what} wrote more than sandbox.disk_gb {program.sandbox.disk_gb:g} GB "
              f"to its out/ folder and was killed"),
        startup=(f"the trusted start-up (the interpreter and its imports, before {what} began) took more "
                 f"than budget.grace_seconds {program.budget.grace_seconds:g} s: the machine is overloaded; "
                 f"nothing of {what} ran"),
        timeout=(f"{what} ran past its budget {budget:g} s + the save margin {save_margin(budget):g} s "
                 f"(agent compute, counted from when its code started) and was killed; make it finish "
                 f"and save in time"))) or ("ok", None)


def eval_status(res: SandboxResult, result: dict | None, program: Program) -> tuple[str, str | None]:
    """The EVAL stage's status and reason. The scorer's verdict wins, unless the server simply
    vanished (then the sandbox says why: timeout, oom, exit code). The EVAL log is never quoted:
    it may hold held-out bytes the model printed."""
    if result is not None and not result.get("hangup"):
        status, reason = str(result.get("status")), result.get("reason")
        if status == "ok" and not (isinstance(result.get("value"), (int, float)) and math.isfinite(result["value"])):
            return "invalid", f"the evaluator returned no finite value ({result.get('value')!r})"
        return status, reason
    said = f" ({result['reason']})" if result and result.get("reason") else ""
    out = ladder(res, Wording(
        what="the evaluation", memory_gb=program.sandbox.memory_gb, ok_codes=(),
        timeout=f"the evaluation ran past eval_seconds {program.budget.eval_seconds:g} s",
        crash=lambda code: (f"the model server {ended(code)} before the evaluation ended{said}; "
                            f"its output is in {EVAL_LOG} (for humans only)")))
    assert out is not None                      # ok_codes=(): every end is a failure
    return out


def eval_outcome(res: SandboxResult, result: dict | None, program: Program) -> tuple[str, str | None, float | None]:
    """(status, reason, the metric when status is ok) of an EVAL stage."""
    status, reason = eval_status(res, result, program)
    value = float(result["value"]) if status == "ok" and result is not None else None
    return status, reason, value


def inline_metric(log: Path, regex: str) -> float | None:
    """The last match of run.metric_regex in the log (its first group, else the whole match)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    last = None
    for m in re.finditer(regex, text, re.M):
        last = m
    if last is None:
        return None
    try:
        return float(last.group(1) if last.groups() else last.group(0))
    except (ValueError, TypeError):
        return None


def inline_outcome(status: str, reason: str | None, log: Path,
                   regex: str | None) -> tuple[str, str | None, float | None]:
    """(status, reason, metric) of an inline run, from TRAIN's status and its log; the reason
    says the metric is self-reported when nothing worse happened."""
    value = None
    if status == "ok":
        found = inline_metric(log, regex or "")
        if found is None or not math.isfinite(found):
            status, reason = "crash", f"no finite metric in the log matching run.metric_regex {regex!r}"
        else:
            value = found
    return status, reason or INLINE_WARNING, value
