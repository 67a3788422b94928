"""Exit codes of `./run.sh` (autoresearch.run.runner), so scripts can tell an ok run from a crash,
and the two errors that end a run before it starts (HarnessError, RunBusy).

One place for them: the runner returns these, the README's table is this list, tests check each.
"""
from __future__ import annotations

from enum import IntEnum


DISK_FULL_MARK = "disk-full"   # .autoresearch/<this>: ./run.sh hit ENOSPC; the next Stop lets the agent stop


class HarnessError(RuntimeError):
    """The harness cannot run an experiment (arguments, program.md, backend, data); the message says the fix."""


class RunBusy(HarnessError):
    """Another run of this project is in progress (it holds .autoresearch/run.lock)."""


class RunExit(IntEnum):
    OK = 0            # a metric was measured (runs/NNNN/metrics.json status ok)
    CRASH = 1         # train.py failed: crash, timeout, oom or invalid; the reason is printed and recorded
    NOT_STARTED = 2   # nothing ran: bad usage, invalid program.md, no sandbox, no data (the message says the fix)
    HARNESS = 3       # the harness failed mid-run (a bug): not train.py's fault; the run is marked interrupted
    DISK_FULL = 74    # no space left on the device (EX_IOERR): a human must free space; nothing half-recorded
    BUSY = 75         # another run of this project is in progress (EX_TEMPFAIL): wait for it, then run again
    INTERRUPTED = 130  # Ctrl-C / SIGTERM / SIGHUP: the run is marked interrupted and its sandbox stopped


def for_status(status: str) -> RunExit:
    """The exit code for a finished run's metrics.json status."""
    if status == "ok":
        return RunExit.OK
    if status == "interrupted":
        return RunExit.INTERRUPTED
    return RunExit.CRASH
