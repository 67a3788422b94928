"""`./run.sh` (`python -m autoresearch.run`): one experiment, or a wave.

    ./run.sh -m "why"            one experiment now (the run lock: one plain run at a time)
    ./run.sh -m "why" --queue    snapshot the editable set into a new queued run; returns at once
    ./run.sh --wait              until every run of the wave has ended; one short table
    --serve, --execute NNNN      the scheduler and its per-slot runners (scheduler.py): trusted
                                 host processes that --queue and --wait start; never the agent's
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time

from ..program import ConfigError, load_program, project_root
from ..record import HarnessError, RUNS_DIR, RunBusy, RunExit, for_status
from ..registry import BACKEND_CHOICES


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run.sh", description="Run one experiment for the current editable set, or queue it into a wave.")
    ap.add_argument("-m", "--message", metavar="TEXT", help="what changed and why (recorded with the run)")
    ap.add_argument("--budget", type=float, metavar="SECONDS", help="training budget (default: program.md)")
    ap.add_argument("--seed", type=int, metavar="N", help="seed (default: program seed + earlier runs of this train.py)")
    ap.add_argument("--backend", choices=BACKEND_CHOICES, help="sandbox (default: program.md)")
    ap.add_argument("--queue", action="store_true", help="queue this snapshot into the wave; return at once")
    ap.add_argument("--wait", action="store_true", help="wait for every queued run of the wave; print a table")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--execute", metavar="RUN", help=argparse.SUPPRESS)
    ap.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--slots", type=int, default=1, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    """./run.sh; the exit code says how the run ended (autoresearch/record/exits.py)."""
    args = build_parser().parse_args(argv)
    if args.serve or args.execute:
        from .scheduler import execute_child, serve
        root = project_root()
        return serve(root) if args.serve else execute_child(root, args.execute, args.slot, args.slots)
    if args.wait:
        if args.message is not None or args.queue:
            print("run.sh: --wait takes no other option: ./run.sh --wait", file=sys.stderr)
            return RunExit.NOT_STARTED
        return _guarded(lambda: wait(project_root()))
    if args.message is None or not args.message.strip():
        print("run.sh: -m needs a message saying what changed and why", file=sys.stderr)
        return RunExit.NOT_STARTED
    if args.queue:
        return _guarded(lambda: _queue(args))
    return _guarded(lambda: _run(args))


def _queue(args) -> int:
    from .enqueue import queue_experiment
    from .scheduler import ensure_scheduler
    root = project_root()
    e = queue_experiment(root, args.message.strip(), args.budget, args.seed, args.backend)
    ensure_scheduler(root)
    print(f"queued run {e.run_id} (seed {e.seed}, budget {e.budget_seconds:g} s): edit and queue the next "
          "variant, or ./run.sh --wait for the wave's results")
    return RunExit.OK


def _run(args) -> int:
    from .report import current_best, summary
    from .runner import RunOptions, run_experiment
    root = project_root()
    program = load_program(root)
    if waiting := [e.run_id for e in wave(root) if e.state in ("queued", "running")]:
        raise RunBusy(f"a wave is in flight (runs {', '.join(waiting)}): ./run.sh --wait for it, end your turn "
                      f"so it is decided, then run again (or queue this one with --queue)")
    m = run_experiment(root, args.message.strip(), RunOptions(budget=args.budget, seed=args.seed,
                       backend=args.backend), echo=sys.stdout)
    best, note = current_best(root, program, m)
    print("\n".join(summary(m, program, best, note, root / RUNS_DIR / m.run_id, root)), flush=True)
    return for_status(m.status)


def wave(root) -> list:
    """The wave: queued runs no ledger row has decided yet, oldest first."""
    from ..ledger import LedgerError, decided_runs, read_rows
    from ..record import entries
    try:
        decided = decided_runs(read_rows(root))
    except (LedgerError, OSError):
        decided = set()
    return [e for e in entries(root) if e.run_id not in decided]


def wait(root, poll_s: float = 0.25, limit_s: float | None = None) -> int:
    """Until no run of the wave is queued or running (or `limit_s`: the agent's Bash tool would cut
    a longer wait; the wave goes on and a second --wait picks it up). Then one short table."""
    from .scheduler import ensure_scheduler
    program = load_program(root)
    limit = limit_s if limit_s is not None else max(60.0, program.budget.experiment_seconds() - 30)
    t0 = time.monotonic()
    started = False
    while True:
        live = [e for e in wave(root) if e.state in ("queued", "running")]
        if not live:
            break
        if not started:                          # a restarted session: the queue is on disk, run it
            ensure_scheduler(root)
            started = True
        if time.monotonic() - t0 > limit:
            print(table(root, program))
            print(f"the wave is still running ({len(live)} runs left): ./run.sh --wait again")
            return RunExit.OK
        time.sleep(poll_s)
    if not wave(root):
        print("no queued runs: queue variants with ./run.sh -m \"why\" --queue")
        return RunExit.OK
    print(table(root, program))
    print("wave finished: update scratchpad.md, then end your turn; the best comparable run is judged")
    return RunExit.OK


def table(root, program) -> str:
    """run, status, metric, description: one line per run of the wave."""
    from ..record import load_verified
    lines = [f"{'run':<6} {'status':<11} {program.metric.name:>10}  description"]
    for e in wave(root):
        m, problem = load_verified(root / RUNS_DIR / e.run_id)
        status = e.state if e.state in ("queued", "running", "cancelled") else (m.status if m else "missing")
        value = f"{m.metric_value:.6f}" if m and m.metric_value is not None and status == "ok" else "-"
        why = "" if status == "ok" or m is None or not m.reason or e.state in ("queued", "running") \
            else f" ({m.reason[:60]})"
        lines.append(f"{e.run_id:<6} {status:<11} {value:>10}  {' '.join(e.message.split())[:70]}{why}")
    return "\n".join(lines)


def _guarded(fn) -> int:
    """The error handling every ./run.sh form shares: a clear message and the exit code that says it."""
    import traceback
    try:
        return fn()
    except RunBusy as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return RunExit.BUSY
    except (HarnessError, ConfigError) as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return RunExit.NOT_STARTED
    except KeyboardInterrupt:
        print("run.sh: interrupted; the run is marked interrupted and its sandbox stopped", file=sys.stderr)
        return RunExit.INTERRUPTED
    except OSError as e:
        if e.errno == errno.ENOSPC:
            _mark_disk_full()
            print(f"run.sh: the disk is full ({e.filename or 'no space left on device'}): nothing more can be "
                  f"recorded; a human must free space (e.g. old runs/NNNN/out/ of runs that were not kept)",
                  file=sys.stderr)
            return RunExit.DISK_FULL
        traceback.print_exc()
        print(f"run.sh: harness error, not train.py's fault: {type(e).__name__}: {e}. The run is marked "
              "interrupted; fix the cause and run again.", file=sys.stderr)
        return RunExit.HARNESS
    except Exception as e:              # a harness bug: never reported as a crash of train.py
        traceback.print_exc()
        print(f"run.sh: harness error, not train.py's fault: {type(e).__name__}: {e}. The run is marked "
              "interrupted.", file=sys.stderr)
        return RunExit.HARNESS


def _mark_disk_full() -> None:
    """Tell the Stop hook (an empty file needs no data blocks): it lets the agent stop, once, instead
    of sending it to run again on a disk that cannot hold a run."""
    from ..record import DISK_FULL_MARK
    try:
        d = project_root() / ".autoresearch"
        d.mkdir(exist_ok=True)
        os.close(os.open(d / DISK_FULL_MARK, os.O_WRONLY | os.O_CREAT, 0o644))
    except Exception:                   # noqa: BLE001 -- best effort on a full disk
        pass
