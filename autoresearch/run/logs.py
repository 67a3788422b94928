"""train.log, the run's one log for humans and the agent: the harness appends its own lines,
and reads back the tail (what the agent sees of a failed run) and the last `step N` (steps/s)."""
from __future__ import annotations

import os
import re
from pathlib import Path

TAIL_LINES = 15
STEP_LINE = re.compile(r"^step\s+(\d+)", re.M)
EVAL_BANNER = "---- EVAL: the trusted scorer"     # the harness's line where EVAL begins (progress.py reads it)


def log_tail(path: Path, n: int = TAIL_LINES, max_bytes: int = 65536) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [ln.rstrip() for ln in text.replace("\r", "\n").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines[-n:]


def append_log(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def steps_per_second(log: Path, train_seconds: float | None) -> float | None:
    """The last `step N` the log printed over the TRAIN stage's wall time. Only a contention check:
    a run reporting few steps is never kept, so a false number cannot win anything."""
    if not train_seconds:
        return None
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 262144))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    steps = [int(m.group(1)) for m in STEP_LINE.finditer(text)]
    return round(steps[-1] / train_seconds, 3) if steps else None


def servers_warmed(log: Path, threads: list) -> bool:
    """Are model servers started with TRAIN past their warm-up (or ended)? Read from their log, in
    which only trusted code (startup.py: one WARMED line each) writes before GO."""
    from .startup import WARMED
    try:
        n = log.read_bytes().count(WARMED.encode())
    except OSError:
        n = 0
    return n >= len(threads) or not all(t.is_alive() for t in threads)


def join_servers(threads: list, hang_up) -> None:
    """Wait for the model servers' threads; on Ctrl-C, `hang_up()` (their sessions end, so do
    the servers), wait for them all the same, and re-raise."""
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    except BaseException:
        hang_up()
        for t in threads:
            t.join()
        raise
