"""The live line: its parser on a log that grows while it is read, its drawing on a real
pseudo-terminal, and `./run.sh` itself -- a live line on a terminal, the same terse lines as
before when stdout is a pipe (the agent's Bash tool)."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest

from autoresearch.run.logs import EVAL_BANNER
from autoresearch.run.progress import LiveLine, LogFollower, Progress, describe, live_progress, parse_line

from experiment_support import HONEST, RUN_SH, make_project, run_env, run_sh

TRAIN_LINE = "step {:6d} | {:6.1f}s | lr 3.00e-03 | train loss {:.3f} (3.383 bits) | 81,000 tok/s"


def test_parse_line_reads_train_py_and_older_formats():
    assert parse_line(TRAIN_LINE.format(120, 12.3, 2.345)) == (120, 2.345)
    assert parse_line("iter 250: loss 1.9876, time 12.34ms, mfu 5.00%") == (250, 1.9876)  # nanoGPT
    assert parse_line("step 500: train loss 1.80, val loss 1.95") == (500, 1.80)       # the val loss is not it
    assert parse_line("step 500: val loss 1.95") == (500, None)
    assert parse_line("epoch 3 | loss=0.5e-1") == (None, 0.05)
    assert parse_line("device cpu | params 1,234 | budget 300s") == (None, None)
    assert parse_line("stepping stones 12") == (None, None)


def test_the_follower_reads_a_log_while_it_grows(tmp_path):
    """A writer thread appends train.py-style lines (some in two writes, mid-line) while the
    follower polls: it never reports a half-written number, steps only go up, and it ends on the
    last line; the EVAL banner switches the stage and later lines are not training steps."""
    log = tmp_path / "train.log"
    log.write_text("device cpu | params 1,234 | train bytes 9,999 | budget 3s | seed 0\n")
    follower = LogFollower(log)
    steps = [(s, 5.0 - s / 100) for s in range(10, 310, 10)]
    done = threading.Event()

    def writer():
        with open(log, "a") as f:
            for step, loss in steps:
                line = TRAIN_LINE.format(step, step / 10, loss) + "\n"
                f.write(line[:20])                     # half a line first: the number is cut
                f.flush()
                time.sleep(0.004)
                f.write(line[20:])
                f.flush()
                time.sleep(0.004)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    seen: list[Progress] = []
    while not done.is_set():
        seen.append(follower.poll().model_copy())
        time.sleep(0.003)
    t.join()
    seen.append(follower.poll().model_copy())
    known = [p.step for p in seen if p.step is not None]
    assert len(set(known)) > 3, "the follower saw the log grow, not only its end"
    assert known == sorted(known), "steps only go up"
    assert all(p.step in {s for s, _ in steps} for p in seen if p.step is not None), "no half-read numbers"
    assert (seen[-1].stage, seen[-1].step, seen[-1].loss) == ("TRAIN", 300, pytest.approx(2.0))

    with open(log, "a") as f:
        f.write(f"\n{EVAL_BANNER} (autoresearch.run.scorer); ...\nstep 999 | train loss 0.001\n")
    p = follower.poll()
    assert (p.stage, p.step, p.loss) == ("EVAL", 300, pytest.approx(2.0))
    log.write_text(TRAIN_LINE.format(5, 0.5, 7.0) + "\n")   # rewritten (a new, shorter log): read again
    p = follower.poll()
    assert (p.stage, p.step, p.loss) == ("TRAIN", 5, pytest.approx(7.0))


def test_describe_says_stage_time_step_and_loss():
    line = describe(Progress(step=1234, loss=2.3456), 65, 300, 60, run_id="0007")
    assert line == "run 0007  TRAIN [###.............]  1:05 / 5:00  step 1,234  loss 2.346"
    line = describe(Progress(stage="EVAL", step=1234, loss=2.3456), 312, 300, 60, run_id="0007")
    assert line == "run 0007  EVAL  5:12 (train 5:00 + eval 1:00)  step 1,234  loss 2.346"
    assert describe(Progress(), 3725, 7200).endswith("1:02:05 / 2:00:00  step -  loss -")


def _pty(cols: int = 120) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    return master, slave


def _drain(master: int, until: float) -> bytes:
    """What the terminal got until `until` (or until the other side closed)."""
    import select
    out = b""
    while time.monotonic() < until:
        r, _, _ = select.select([master], [], [], 0.05)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:                            # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
    return out


def test_the_live_line_redraws_on_a_terminal_and_clears_for_other_lines(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(TRAIN_LINE.format(40, 4.0, 3.25) + "\n")
    master, slave = _pty()
    stream = open(slave, "w", closefd=True)
    try:
        with live_progress(stream, log, 300, 60, "0042") as live:
            assert isinstance(live, LiveLine)
            time.sleep(0.3)
            with open(log, "a") as f:
                f.write(TRAIN_LINE.format(80, 8.0, 3.125) + "\n")
            time.sleep(0.8)
            live.around(lambda s: print(s, file=stream, flush=True))("run 0042: sandbox bwrap")
            time.sleep(0.8)
        seen = _drain(master, time.monotonic() + 0.5).decode()
    finally:
        stream.close()
        os.close(master)
    assert "run 0042  TRAIN [" in seen and "/ 5:00  step 40  loss 3.25" in seen
    assert "step 80  loss 3.125" in seen, "the line follows the growing log"
    assert "\r\x1b[Krun 0042: sandbox bwrap\r\n" in seen, "another line first clears the live line"
    assert "step 80" in seen.split("sandbox bwrap\r\n")[1], "and is drawn again below it"
    assert seen.endswith("\r\x1b[K"), "the line is gone when the run ends"


def test_no_terminal_means_no_live_line_and_no_thread(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(TRAIN_LINE.format(40, 4.0, 3.25) + "\n")
    buf = io.StringIO()
    before = threading.active_count()
    with live_progress(buf, log, 300) as live:
        assert not isinstance(live, LiveLine) and threading.active_count() == before
        say = live.around(lambda s: print(s, file=buf))
        say("run 0001: sandbox bwrap")
        time.sleep(0.2)
    assert buf.getvalue() == "run 0001: sandbox bwrap\n"
    master, slave = _pty()
    with open(slave, "w") as tty, live_progress(tty, log, 300) as live:
        assert isinstance(live, LiveLine), "on by default on a terminal"
    os.close(master)
    master, slave = _pty()
    os.environ["AUTORESEARCH_LIVE"] = "0"                   # a terminal, but switched off
    try:
        with open(slave, "w") as tty, live_progress(tty, log, 300) as live:
            assert not isinstance(live, LiveLine)
    finally:
        os.environ.pop("AUTORESEARCH_LIVE")
        os.close(master)

# ------------------------------------------------------------------ ./run.sh for real

LIVE = re.compile(r"\r\x1b\[K([^\r\n]*)(?=\r\x1b\[K)")     # a drawn line: the next draw or a clear follows it
FAST_LOG = ("LOG_EVERY_SECONDS = 10", "LOG_EVERY_SECONDS = 0.5")  # train.py's step lines twice a second


def _run_on_a_terminal(proj: Path, *args: str) -> tuple[int, str]:
    master, slave = _pty()
    with open(proj.parent / f"{proj.name}.stderr", "wb") as err:   # stdout is what the live line shares
        p = subprocess.Popen([str(RUN_SH), *args], cwd=proj, env=run_env(TERM="xterm"), stdin=subprocess.DEVNULL,
                             stdout=slave, stderr=err)
    os.close(slave)
    try:
        out = _drain(master, time.monotonic() + 120)
        rc = p.wait(timeout=30)
    finally:
        os.close(master)
    return rc, out.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.bwrap
def test_run_sh_shows_a_live_line_on_a_terminal_and_stays_terse_in_a_pipe(tmp_path, bwrap_available, data_dir):
    a = make_project(tmp_path / "tty", train_py=HONEST.replace(*FAST_LOG))
    rc, screen = _run_on_a_terminal(a, "-m", "baseline", "--backend", "bwrap", "--budget", "4")
    assert rc == 0, screen
    drawn = [m.group(1) for m in LIVE.finditer(screen) if m.group(1)]
    assert any(re.search(r"run 0001  TRAIN \[[#.]+\]  \d+:\d\d / 0:04  step \d", d) for d in drawn), drawn
    assert any(re.search(r"step [\d,]+  loss \d", d) for d in drawn), "the step and loss from train.log"
    assert any(d.startswith("run 0001  EVAL  ") and "(train 0:04 + eval" in d for d in drawn), drawn
    what_remains = LIVE.sub("", screen).replace("\r\x1b[K", "").replace("\r\n", "\n")

    b = make_project(tmp_path / "pipe", train_py=HONEST.replace(*FAST_LOG))
    p = run_sh(b, "-m", "baseline", "--backend", "bwrap", "--budget", "4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "\r" not in p.stdout and "\x1b" not in p.stdout and "TRAIN" not in p.stdout, "no live line in a pipe"
    shape = lambda text: [re.sub(r"[\d.]+", "N", ln.replace(str(b), "P").replace(str(a), "P"))  # noqa: E731
                          for ln in text.splitlines() if ln.strip()]
    assert shape(what_remains) == shape(p.stdout), "on a terminal the same lines, plus only the live line"
    assert len(p.stdout.splitlines()) <= 6
