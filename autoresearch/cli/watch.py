"""`autoresearch status --watch`: the status screen, redrawn every few seconds until Ctrl-C.

On top: the runs in flight (one, or a wave's several): stage, elapsed against the budget, the last
step and training loss their train.log printed (run/progress.py's parser, the one `./run.sh`'s
live line uses). Below: the status table's summary and its last decisions. Read-only like
`status`: a run is "in flight" by the test the loop itself uses (loop/runscan.py: the runner's
.running lock, else its age), so the screen and the Stop hook never disagree.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from pydantic import BaseModel

from ..loop.runscan import load_run
from ..program import RUN_OVERHEAD_S, ConfigError, load_program
from ..record import LOG_FILE, RUNS_DIR, run_ids
from ..registry import from_log
from ..run import LogFollower, clock

RECENT_RUNS = 12                       # only the newest run folders can be in flight
LAST_DECISIONS = 10


class InFlight(BaseModel):
    """One run that has started and not finished."""
    run_id: str
    stage: str                         # TRAIN | EVAL
    elapsed: float                     # seconds since the run started
    budget: float                      # its training budget (its own, from metrics.json)
    eval_budget: float | None
    step: int | None
    loss: float | None
    description: str


def in_flight(root: Path, followers: dict[str, LogFollower]) -> list[InFlight]:
    """The runs in progress, oldest first. `followers` keeps each run's log position between
    refreshes, so a redraw reads only what the log gained."""
    program = load_program(root)
    b = program.budget
    out = []
    for rid in run_ids(root)[-RECENT_RUNS:]:
        rec = load_run(root, rid, program.run.train_script, b.experiment_seconds(),
                       extra_s=b.eval_seconds + RUN_OVERHEAD_S)
        m = rec.metrics
        if not rec.in_progress or m is None:
            continue
        follower = followers.setdefault(rid, LogFollower(Path(root) / RUNS_DIR / rid / LOG_FILE))
        p = follower.poll()
        elapsed = max(0.0, time.time() - m.started_at.timestamp())
        eval_budget = None if from_log(m.mode) else b.eval_seconds
        out.append(InFlight(run_id=rid, stage=p.stage, elapsed=elapsed, budget=m.budget_seconds,
                            eval_budget=eval_budget, step=p.step, loss=p.loss,
                            description=" ".join(m.description.split())))
    for gone in set(followers) - {f.run_id for f in out}:
        del followers[gone]
    return out


def screen(root: Path, followers: dict[str, LogFollower], branch: str | None = None) -> object:
    """One frame: the runs in flight over the status summary and the last decisions."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .status import gather, render
    now = time.strftime("%H:%M:%S")
    parts: list = [Text(f"autoresearch status --watch  {now}  (Ctrl-C to stop)", style="bold")]
    try:
        flights = in_flight(root, followers)
        rep = gather(root, branch)
    except (ConfigError, OSError, ValueError) as e:   # program.md mid-edit, a ledger being rewritten
        parts.append(Text(f"cannot read the project right now: {e}", style="yellow"))
        return Group(*parts)
    if flights:
        t = Table(title="in flight", title_justify="left", show_edge=False)
        for col, kw in (("run", {}), ("stage", {}), ("elapsed", {"justify": "right"}),
                        ("budget", {"justify": "right"}), ("step", {"justify": "right"}),
                        ("loss", {"justify": "right"}), ("description", {"overflow": "fold", "max_width": 50})):
            t.add_column(col, **kw)
        for f in flights:
            budget = clock(f.budget) + (f" + eval {clock(f.eval_budget)}" if f.stage == "EVAL" and f.eval_budget
                                        else "")
            t.add_row(f.run_id, f.stage, clock(f.elapsed), budget, "-" if f.step is None else f"{f.step:,}",
                      "-" if f.loss is None else f"{f.loss:.4g}", f.description,
                      style="bold cyan" if f.stage == "TRAIN" else "bold magenta")
        parts.append(t)
    elif not rep.awaiting_decision:
        parts.append(Text("no run in flight", style="dim"))
    for w in rep.awaiting_decision:          # finished, not decided yet: the Stop hook's turn
        got = f"{rep.metric} {w.value:.4f}" if w.value is not None else w.run_status
        parts.append(Text(f"run {w.run_id} finished ({got}): waiting for decision -- the Stop hook keeps or "
                          f"reverts it when the agent ends its turn  [{w.description[:60]}]", style="bold yellow"))
    parts.append(render(rep, last=LAST_DECISIONS))
    return Group(*parts)


def changes(root: Path, followers: dict[str, LogFollower], branch: str | None = None) -> list[str]:
    """The screen as plain facts, one line each, without clocks: in a pipe, a line is printed when it
    is new (a run starts a stage, logs a step, finishes, is decided), never a redraw."""
    from .status import gather
    try:
        flights, rep = in_flight(root, followers), gather(root, branch)
    except (ConfigError, OSError, ValueError) as e:
        return [f"cannot read the project right now: {e}"]
    out = [f"run {f.run_id} {f.stage}" + ("" if f.step is None else f" step {f.step}")
           + ("" if f.loss is None else f" loss {f.loss:.4g}") + f"  [{f.description[:60]}]" for f in flights]
    for w in rep.awaiting_decision:
        got = f"{rep.metric} {w.value:.4f}" if w.value is not None else w.run_status
        out.append(f"run {w.run_id} finished ({got}): waiting for decision")
    for r in rep.rows[-LAST_DECISIONS:]:
        out.append(f"run {r.run_id or '?'} {r.status}" + ("" if r.value is None else f" {rep.metric} {r.value:.6f}")
                   + f"  [{' '.join(r.description.split())[:60]}]")
    return out


def _lines(root: Path, interval: float, branch: str | None) -> int:
    followers: dict[str, LogFollower] = {}
    seen: set[str] = set()
    try:
        while True:
            now = changes(root, followers, branch)
            for line in now:
                if line not in seen:
                    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
            seen = set(now)
            time.sleep(interval)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


def main(root: Path, interval: float = 2.0, branch: str | None = None) -> int:
    """Redraw every `interval` seconds until Ctrl-C, which ends it with exit 0; in a pipe, print a
    line per change instead (a redrawn screen would print nothing there)."""
    from rich.console import Console
    from rich.live import Live

    if interval <= 0:
        print("autoresearch status --watch: --interval must be more than 0 seconds, e.g. --interval 2",
              file=sys.stderr)
        return 2
    if not sys.stdout.isatty():
        return _lines(root, interval, branch)
    followers: dict[str, LogFollower] = {}
    console = Console()
    try:
        with Live(screen(root, followers, branch), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(screen(root, followers, branch), refresh=True)
    except KeyboardInterrupt:
        return 0
