"""The outcome ladder: what a stage's sandbox result (and the scorer's result) mean for the run,
as (status, reason). One ladder for every caller: the runner's TRAIN and EVAL stages and
`autoresearch final`.

    TRAIN   disk limit > timeout > oom > exit code (crash, with the line that ended the traceback) > ok
    EVAL    the scorer's verdict, unless the server vanished first: then timeout > oom > exit code
    inline  the last match of run.metric_regex in the log, or a crash when there is none
"""
from __future__ import annotations

import math
import re
from pathlib import Path

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


def _crash_reason(res: SandboxResult, log: Path, what: str) -> str:
    last = _exception_line(log_tail(log, 40))
    code = res.exit_code
    why = f"killed by signal {code - 128}" if code is not None and code > 128 else f"exited with code {code}"
    return f"{what} {why}" + (f": {last[:200]}" if last else "")


def train_status(res: SandboxResult, program: Program, budget: float, log: Path, what: str) -> tuple[str, str | None]:
    if res.disk_exceeded:
        return "crash", (f"disk limit: {what} wrote more than sandbox.disk_gb {program.sandbox.disk_gb:g} GB "
                         f"to its out/ folder and was killed")
    if res.startup_timed_out:
        return "timeout", (f"the trusted start-up (the interpreter and its imports, before {what} began) took more "
                           f"than budget.grace_seconds {program.budget.grace_seconds:g} s: the machine is overloaded; "
                           f"nothing of {what} ran")
    if res.timed_out:
        return "timeout", (f"{what} ran past its budget {budget:g} s + the save margin {save_margin(budget):g} s "
                           f"(agent compute, counted from when its code started) and was killed; make it finish "
                           f"and save in time")
    if res.oom:
        return "oom", f"{what} went over the memory limit ({program.sandbox.memory_gb:g} GB) and was killed"
    if res.exit_code != 0:
        return "crash", _crash_reason(res, log, what)
    return "ok", None


def eval_status(res: SandboxResult, result: dict | None, program: Program) -> tuple[str, str | None]:
    """The EVAL stage's status and reason. The scorer's verdict wins, unless the server simply
    vanished (then the sandbox says why: timeout, oom, exit code). The EVAL log is never quoted:
    it may hold held-out bytes the model printed."""
    if result is not None and not result.get("hangup"):
        status, reason = str(result.get("status")), result.get("reason")
        if status == "ok" and not (isinstance(result.get("value"), (int, float)) and math.isfinite(result["value"])):
            return "invalid", f"the evaluator returned no finite value ({result.get('value')!r})"
        return status, reason
    if res.timed_out:
        return "timeout", f"the evaluation ran past eval_seconds {program.budget.eval_seconds:g} s"
    if res.oom:
        return "oom", f"the evaluation went over the memory limit ({program.sandbox.memory_gb:g} GB)"
    code = res.exit_code
    why = f"killed by signal {code - 128}" if code is not None and code > 128 else f"exited with code {code}"
    return "crash", (f"the model server {why} before the evaluation ended"
                     + (f" ({result['reason']})" if result and result.get("reason") else "")
                     + f"; its output is in {EVAL_LOG} (for humans only)")


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
