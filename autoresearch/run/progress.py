"""Live progress for a human at a terminal: which stage a run is in, how long it has gone, and
the last training step and loss its train.log printed.

`./run.sh` in a terminal redraws one line (a carriage return, no scrolling) while the run trains
and evaluates; when stdout is not a terminal -- the agent's Bash tool, a pipe, a CI log -- nothing
changes: the output stays the terse lines the agent and the tests read. `autoresearch status
--watch` reads the same log with the same parser (LogFollower), so both show the same numbers.

What the log says is display only: train.py prints it, so it is never a result (the metric is the
trusted scorer's). Step lines look like train.py's own
`step    120 |   12.3s | lr 3.00e-03 | train loss 2.345 (3.383 bits) | 81,000 tok/s`;
older repos' `iter 120: loss 2.345` is read too.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Literal, TextIO

from pydantic import BaseModel

from .logs import EVAL_BANNER

STEP = re.compile(r"^\s*(?:step|iter(?:ation)?)\s*[:=#]?\s*(\d+)", re.I)
_NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|nan|inf)"
LOSS = re.compile(r"(?:^|[\s|,;(])(?:(train|training|val|valid|eval|test)[ _])?loss\s*[:=]?\s*" + _NUM, re.I)
HELD_OUT = {"val", "valid", "eval", "test"}       # not the training loss: never shown as it
READ_MAX = 1 << 20                                # a poll reads at most this much new log
REFRESH_S = 0.5


def parse_line(line: str) -> tuple[int | None, float | None]:
    """(step, training loss) from one log line; None for what the line does not say."""
    m = STEP.match(line)
    step = int(m.group(1)) if m else None
    loss = None
    for lm in LOSS.finditer(line):
        if (lm.group(1) or "").lower() not in HELD_OUT:
            loss = float(lm.group(2))
            break
    return step, loss


class Progress(BaseModel):
    """What a run's log has said so far."""
    stage: Literal["TRAIN", "EVAL"] = "TRAIN"
    step: int | None = None
    loss: float | None = None


class LogFollower:
    """Reads a growing train.log from where it stopped last time: each poll costs only the new
    bytes, so a refresh every half second is cheap however long the run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.partial = ""
        self.progress = Progress()

    def poll(self) -> Progress:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self.offset:                   # rewritten from the start: read it again
                    self.offset, self.partial, self.progress = 0, "", Progress()
                if size - self.offset > READ_MAX:        # far behind: only the newest part matters
                    self.offset, self.partial = size - READ_MAX, ""
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError:
            return self.progress
        self.offset += len(data)
        lines = (self.partial + data.decode("utf-8", "replace")).replace("\r", "\n").split("\n")
        self.partial = lines.pop()                       # an unfinished line waits for its end
        for line in lines:
            self._take(line)
        return self.progress

    def _take(self, line: str) -> None:
        if line.startswith(EVAL_BANNER):
            self.progress.stage = "EVAL"
            return
        if self.progress.stage == "EVAL":                # the evaluator's lines are not training steps
            return
        step, loss = parse_line(line)
        if step is not None:
            self.progress.step = step
        if loss is not None:
            self.progress.loss = loss


def clock(seconds: float) -> str:
    """12 -> '0:12', 3725 -> '1:02:05'."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _bar(fraction: float, width: int = 16) -> str:
    done = max(0, min(width, round(fraction * width)))
    return "[" + "#" * done + "." * (width - done) + "]"


def describe(p: Progress, elapsed: float, budget: float, eval_budget: float | None = None,
             run_id: str | None = None, bar: bool = True) -> str:
    """One line: `run 0007  TRAIN [#####...]  1:05 / 5:00  step 120  loss 2.345`."""
    parts = [f"run {run_id}"] if run_id else []
    if p.stage == "TRAIN":
        parts.append("TRAIN" + (" " + _bar(elapsed / budget) if bar and budget > 0 else ""))
        parts.append(f"{clock(elapsed)} / {clock(budget)}")
    else:
        limit = f"train {clock(budget)}" + (f" + eval {clock(eval_budget)}" if eval_budget else "")
        parts += ["EVAL", f"{clock(elapsed)} ({limit})"]
    parts.append(f"step {p.step:,}" if p.step is not None else "step -")
    parts.append(f"loss {p.loss:.4g}" if p.loss is not None else "loss -")
    return "  ".join(parts)


def wants_live(stream: TextIO | None) -> bool:
    """A live line only for a human: stdout is a terminal (the agent's Bash tool has none), the
    terminal can move the cursor, and AUTORESEARCH_LIVE is not 0."""
    if stream is None or os.environ.get("AUTORESEARCH_LIVE", "1") == "0" or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LiveLine:
    """Redraws one status line on `stream` from a background thread until closed. Other output
    goes through `around(say)`, which clears the line first, so the two never mix."""

    def __init__(self, stream: TextIO, log: Path, budget: float, eval_budget: float | None = None,
                 run_id: str | None = None, refresh_s: float = REFRESH_S) -> None:
        self.stream, self.budget, self.eval_budget, self.run_id = stream, budget, eval_budget, run_id
        self.follower = LogFollower(log)
        self.refresh_s = refresh_s
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.shown = False
        self.thread = threading.Thread(target=self._loop, name="autoresearch-live-line", daemon=True)

    def line(self) -> str:
        return describe(self.follower.poll(), time.monotonic() - self.started, self.budget, self.eval_budget,
                        self.run_id)

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        text = self.line()[:max(10, width)]                  # a wrapped line could not be redrawn
        with self.lock:
            if self.stop.is_set():
                return
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self.shown = True

    def _loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):             # display only: never fails a run
                self._draw()
            self.stop.wait(self.refresh_s)

    def around(self, say: Callable[[str], None]) -> Callable[[str], None]:
        def said(text: str) -> None:
            with self.lock:
                self._clear()
                say(text)
        return said

    def __enter__(self) -> "LiveLine":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        with self.lock, contextlib.suppress(Exception):
            self._clear()


class _Quiet:
    """No terminal: no live line, and `say` unchanged."""

    def around(self, say: Callable[[str], None]) -> Callable[[str], None]:
        return say


@contextlib.contextmanager
def live_progress(stream: TextIO | None, log: Path, budget: float, eval_budget: float | None = None,
                  run_id: str | None = None) -> Iterator[LiveLine | _Quiet]:
    """The runner's hook: a LiveLine on a terminal, else nothing at all."""
    if not wants_live(stream):
        yield _Quiet()
        return
    assert stream is not None
    with LiveLine(stream, log, budget, eval_budget, run_id) as live:
        yield live
