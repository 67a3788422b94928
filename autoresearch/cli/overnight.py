"""`autoresearch overnight --hours H`: drive Claude Code headless, through claude-agent-sdk, until a deadline.

The project's own wiring does the research loop: its .claude/settings.json (setting_sources=
["project"]: the guard, the Stop hook that keeps or reverts and sends the agent on, deny rules,
env) -- or, when the project does not wire the guard itself, the bundle loaded as a plugin. This
driver only keeps a session alive and bounded in time:

- one session, resumed (`resume=session_id`) after a CLI crash or an API error that outlived the
  CLI's own retries, with a growing back-off; a resume never starts a fresh conversation;
- a clean end of the session means the Stop hook let the agent stop. If the loop says its budget
  is spent (or it was paused), the night is over; if budget remains, the agent stopped by accident
  and is sent on ("continue"), at most MAX_IDLE_RESUMES times in a row without a new experiment;
- at the deadline it pauses the loop (the experiment in flight is still decided, then the Stop
  hook lets the agent stop), waits a grace period of one experiment's wall time, then interrupts;
  the pause it placed is lifted when it exits, so the next session is not paused by surprise;
- an error no retry can fix (the API refuses the credentials, the plan has no credit, the model
  does not exist) ends the night at once, with the fix in the message: the CLI's own retries are
  cut short as soon as one reports such a status. Only transient errors are retried;
- at the end, the optional `notify:` of program.md (a command, a webhook) is sent by this process;
- permissions are fail-closed: anything the guard did not explicitly allow reaches `can_use_tool`,
  which denies it; the Agent/Task tools (hooks are reported not to fire inside subagents) are
  removed entirely.

This module is the night's loop and its state; headless.py runs one session (the SDK options, the
messages, the unfixable errors), notify.py sends the end-of-night message.

Everything goes to .autoresearch/overnight.log (one line per event); the session id and counters
to .autoresearch/overnight.json, so `--resume` picks the same session up after a reboot.
"""
from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from ..atomic import write_atomic
from ..program import Program, load_program
from .headless import session
from .nightstate import OvernightState
from .notify import notify

LOG_FILE = "overnight.log"
STATE_FILE = "overnight.json"
MAX_IDLE_RESUMES = 3
BACKOFF_S = (15.0, 30.0, 60.0, 120.0, 300.0)
RETRY_ENV = "AUTORESEARCH_RETRY_SECONDS"         # overrides the first back-off (tests use 1)
PAUSE_REASON = "overnight: the --hours deadline was reached"
DEADLINE_REASON = "the --hours deadline was reached"
BUNDLE = Path(__file__).resolve().parents[2]    # loaded as a plugin when a project does not wire the guard

START_PROMPT = ("Follow program.md: read it and scratchpad.md, then run the research loop on your own, "
                "one experiment per turn, until the harness tells you the budget is spent. Start now.")
CONTINUE_PROMPT = ("The research loop is not finished: budget remains. Re-read scratchpad.md, check the last "
                   "result (results.tsv, runs/), and go on with the next experiment as program.md says.")
RESUME_PROMPT = ("The session was interrupted by an error ({error}) and has been resumed. Re-read scratchpad.md, "
                 "check whether the last ./run.sh finished (runs/, results.tsv), and go on with the research loop.")
EXIT_FATAL = 3                                  # the exit status when an error no retry can fix ended the night



class DriverError(RuntimeError):
    """The night cannot start (no guard wiring, invalid program.md, ...); the message says the fix."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Night:
    """One overnight run: configuration, the log, and the state shown and saved."""

    def __init__(self, root: Path, hours: float, *, model: str | None = None, prompt: str | None = None,
                 cli_path: str | None = None, env: dict[str, str] | None = None, resume: str | None = None,
                 backoff: tuple[float, ...] = BACKOFF_S, grace_s: float | None = None, max_errors: int = 50,
                 on_update: Callable[["Night"], None] | None = None):
        self.root = Path(root).resolve()
        self.program: Program = load_program(self.root)
        self.hours = hours
        self.model, self.cli_path, self.env = model, cli_path, dict(env or {})
        self.prompt = prompt or START_PROMPT
        self.backoff, self.max_errors = backoff, max_errors
        self.grace_s = grace_s if grace_s is not None else self.program.budget.experiment_seconds() + 60
        self.on_update = on_update or (lambda n: None)
        self.on_log: Callable[[str, str], None] = lambda kind, text: None
        self.dir = self.root / ".autoresearch"
        self.dir.mkdir(parents=True, exist_ok=True)
        start = _now()
        self.state = OvernightState(session_id=resume, started_at=start, deadline=start + timedelta(hours=hours),
                                    experiments_at_start=self.experiments())
        self.plugin = self._plugin()
        self._paused_by_us = False
        self.fatal: str | None = None                          # set by the first unfixable API error
        self._rows_seen = self.state.experiments_at_start     # rows from before tonight are not news

    # -- the project's wiring ------------------------------------------------------------

    def _plugin(self) -> str | None:
        """None when the project wires the guard itself; else the bundle folder to load as a plugin."""
        settings = self.root / ".claude" / "settings.json"
        try:
            wired = "hooks/pre_tool_use.py" in json.dumps(json.loads(settings.read_text()).get("hooks", {}))
        except (OSError, ValueError):
            wired = False
        if wired:
            return None
        if (BUNDLE / ".claude-plugin" / "plugin.json").is_file() and BUNDLE != self.root:
            return str(BUNDLE)
        raise DriverError(f"{settings} does not wire the autoresearch guard, and no plugin to load instead: "
                          "run `autoresearch init` in the project first (or `autoresearch doctor` to see why)")

    # -- what the loop says --------------------------------------------------------------

    def experiments(self) -> int:
        from ..ledger import read_rows
        try:
            return len(read_rows(self.root))
        except Exception:                 # a display figure only
            return 0

    def log_decisions(self) -> None:
        """Each new results.tsv row as a `decision` line, so the morning log says what was kept."""
        from ..ledger import read_rows
        try:
            rows = read_rows(self.root)
        except Exception:                 # a log line only
            return
        for r in rows[self._rows_seen:]:
            value = f"{r.value:.6f}" if r.value is not None else "-"
            self.log("decision", f"#{r.experiment} run {r.run_id}: {r.status} ({r.run_status}) "
                                 f"{self.program.metric.name} {value}, best {r.best if r.best is not None else '-'}: "
                                 f"{r.description[:160]}")
        self._rows_seen = len(rows)

    def best(self) -> float | None:
        from ..gitops import current_branch
        from ..ledger import current_best
        try:
            return current_best(self.root, self.program.metric, current_branch(self.root))
        except Exception:
            return None

    def loop_finished(self, since: datetime) -> str | None:
        """Why the loop let the agent stop, in words true after this driver exits (its own pause is
        lifted by then), or None if budget remains."""
        from ..loop import state
        if self._paused_by_us:
            return DEADLINE_REASON + ": the experiment in flight was decided, then the agent stopped"
        p = state.paused(self.root)
        if p is not None:
            return (f"paused by a human{f' ({p.reason})' if p.reason else ''}: `autoresearch resume`, then "
                    f"{self.again()}, to go on")
        st = state.read_state(self.root)
        if st.finished_at is not None and st.finished_at >= since:
            return "budget reached: " + (st.finish_reason or "the loop's budget is spent")
        return None

    def again(self) -> str:
        """The command that picks this night's session up (it needs --hours: a new deadline)."""
        return f"`autoresearch overnight --hours {self.hours:g} --resume`"

    # -- log and state -------------------------------------------------------------------

    def log(self, kind: str, text: str) -> None:
        line = f"{_now().isoformat(timespec='seconds')}\t{kind}\t{' '.join(text.split())}\n"
        self.on_log(kind, ' '.join(text.split()))
        try:
            with open(self.dir / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass

    def save(self) -> None:
        write_atomic(self.dir / STATE_FILE, self.state.model_dump_json(indent=2) + "\n")
        self.on_update(self)

    # -- the deadline ----------------------------------------------------------------------

    def seconds_left(self) -> float:
        return (self.state.deadline - _now()).total_seconds()

    def pause_for_deadline(self) -> None:
        from ..loop import state
        if state.paused(self.root) is None:
            state.pause(self.root, PAUSE_REASON)
            self._paused_by_us = True
            self.log("deadline", "reached: paused the loop so the agent stops after the experiment in flight")

    def lift_our_pause(self) -> None:
        from ..loop import state
        p = state.paused(self.root)
        if self._paused_by_us and p is not None and p.reason == PAUSE_REASON:
            try:
                state.pause_path(self.root).unlink()
                self.log("deadline", "lifted the pause placed at the deadline")
            except OSError:
                pass


    async def guarded(self) -> bool:
        """The canary, before the first experiment: a session started exactly like the night's must
        have the guard deny its one call. If not, the night ends here (status fatal), with the fix."""
        from .canary import canary
        from .headless import options
        self.log("canary", "checking that the guard runs in a session started like the night's")
        res = await canary(lambda env, turns: options(self, None, env=env, max_turns=turns))
        self.log("canary", res.found)
        if res.ok:                          # the night's hours count from here: the check is set-up
            self.state.deadline = _now() + timedelta(hours=self.hours)
            return True
        self.state.status, self.state.reason = "fatal", f"stopped before the first experiment: {res.found}. {res.fix}"
        self.log("fatal", self.state.reason)
        return False

    async def run(self) -> OvernightState:
        st = self.state
        self.log("night", f"start: {self.hours:g} h until {st.deadline:%Y-%m-%d %H:%M:%S} UTC in {self.root}"
                          + (f" (plugin {self.plugin})" if self.plugin else ""))
        prompt = self.prompt if not st.session_id else CONTINUE_PROMPT
        idle, consecutive_errors = 0, 0
        try:
            if not await self.guarded():
                return st
            while True:
                if self.seconds_left() <= 0:
                    st.status, st.reason = "deadline", DEADLINE_REASON
                    break
                since = _now()
                before = self.experiments()
                end = await session(self, prompt)
                st.session_id = end.session_id or st.session_id
                if end.kind == "deadline":
                    st.status, st.reason = "deadline", f"{DEADLINE_REASON}: {end.detail}"
                    break
                if end.kind == "fatal":
                    st.status, st.reason = "fatal", f"agent error: {end.detail}"
                    self.log("fatal", end.detail)
                    break
                if end.kind == "error":
                    st.errors += 1
                    consecutive_errors += 1
                    if st.errors > self.max_errors:
                        st.status, st.reason = "failed", (f"agent error: {st.errors} errors; the last: {end.detail}; "
                                                          f"{self.again()} picks the session up")
                        break
                    wait = self.backoff[min(consecutive_errors - 1, len(self.backoff) - 1)] if self.backoff else 0
                    wait = min(wait, max(self.seconds_left(), 0))
                    self.log("error", f"{end.detail}; resuming the same session in {wait:.0f} s")
                    self.save()
                    await asyncio.sleep(wait)
                    prompt = RESUME_PROMPT.format(error=end.detail[:120])
                    continue
                consecutive_errors = 0
                why = self.loop_finished(since)
                if why:
                    st.status, st.reason = ("deadline" if self._paused_by_us else "done"), why
                    break
                idle = 0 if self.experiments() > before else idle + 1
                if idle >= MAX_IDLE_RESUMES:
                    st.status = "done"
                    st.reason = (f"nothing left to try: the agent stopped {idle} times in a row without a new "
                                 "experiment though budget remains (its reasons are in scratchpad.md)")
                    break
                self.log("continue", "the agent stopped but budget remains: sending it on")
                prompt = CONTINUE_PROMPT
        except (KeyboardInterrupt, asyncio.CancelledError):
            st.status, st.reason = "interrupted", f"stopped by the user; {self.again()} picks the session up"
            raise
        finally:
            self.lift_our_pause()
            if st.status == "running":
                st.status, st.reason = "failed", st.reason or "the driver stopped unexpectedly"
            self.log("night", f"end: {st.status}: {st.reason}; {self.experiments() - st.experiments_at_start} "
                              f"experiments, {st.sessions} session(s), {st.errors} error(s), ${st.cost_usd:.2f}")
            self.save()
            notify(self)
        return st

def last_session(root: Path) -> str | None:
    try:
        return OvernightState.model_validate_json((root / ".autoresearch" / STATE_FILE).read_text()).session_id
    except (OSError, ValueError):
        return None


def wave_line(root: Path) -> str | None:
    """The wave in flight in one line (None: no wave): each running run's slot or node and
    elapsed / budget, and how many wait in the queue."""
    from .wavestatus import wave_in_flight
    try:
        wave = wave_in_flight(root)
    except (OSError, ValueError):
        return None
    if not wave:
        return None
    running = [w for w in wave if w.state == "running"]
    parts = [f"{w.run_id} on {w.node or f'slot {w.slot}'} {w.elapsed_s or 0:.0f}/{w.budget_s:g} s" for w in running]
    queued = len(wave) - len(running)
    return "; ".join(parts + ([f"{queued} queued"] if queued else [])) or f"{queued} queued"


def _panel(n: Night):
    from rich.table import Table
    st = n.state
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    left = max(n.seconds_left(), 0)
    t.add_row("overnight", f"{n.root}  ({st.status})")
    t.add_row("time left", f"{int(left // 3600)}h{int(left % 3600 // 60):02d}m of {n.hours:g} h "
                           f"(until {st.deadline.astimezone():%H:%M})")
    best = n.best()
    t.add_row("experiments", f"{n.experiments() - st.experiments_at_start} tonight; best {n.program.metric.name} "
                             f"{best:.6f}" if best is not None else
                             f"{n.experiments() - st.experiments_at_start} tonight; no best yet")
    if wave := wave_line(n.root):
        t.add_row("wave", wave)
    t.add_row("session", f"{st.session_id or '-'}  ({st.sessions} start(s), {st.errors} error(s) resumed)")
    t.add_row("activity", f"{st.turns} turns, {st.tool_calls} tool calls; last: {st.last_action or '-'}")
    t.add_row("cost", f"${st.cost_usd:.2f}")
    t.add_row("log", str(n.dir / LOG_FILE))
    return t


def disk_warning(root: Path, hours: float, console) -> str | None:
    """Before the night: say when its runs will not fit on the disk (cli/machine.py disk_plan)."""
    from ..program import ConfigError, load_program
    from .machine import disk_plan
    try:
        plan = disk_plan(root, load_program(root), hours)
    except (ConfigError, OSError):
        return None                          # Night says what is wrong with program.md
    warning = plan.warning() if plan else None
    if warning:
        console.print(f"disk: {warning}", style="yellow", markup=False, highlight=False)
    return warning


def main(root: Path, hours: float, model: str | None = None, prompt: str | None = None, resume: bool = False,
         session: str | None = None) -> int:
    from rich.console import Console
    from rich.live import Live
    console = Console()
    if hours <= 0:
        console.print("autoresearch overnight: --hours must be more than 0", style="red")
        return 2
    sid = session or (last_session(root) if resume else None)
    if resume and not sid:
        console.print("autoresearch overnight: --resume: no earlier session recorded in .autoresearch/overnight.json",
                      style="red")
        return 2
    backoff = BACKOFF_S
    if raw := os.environ.get(RETRY_ENV, "").strip():       # first wait after an error; it doubles
        try:
            backoff = tuple(float(raw) * 2 ** i for i in range(len(BACKOFF_S)))
        except ValueError:
            console.print(f"autoresearch overnight: {RETRY_ENV}={raw!r}: expected seconds", style="red")
            return 2
    disk_warning(root, hours, console)
    try:
        night = Night(root, hours, model=model, prompt=prompt, resume=sid, backoff=backoff,
                      cli_path=os.environ.get("AUTORESEARCH_CLAUDE_CLI") or None)
    except DriverError as e:
        console.print(f"autoresearch overnight: {e}", style="red")
        return 2
    try:
        if console.is_terminal:
            with Live(_panel(night), console=console, refresh_per_second=1, transient=False) as live:
                night.on_update = lambda n: live.update(_panel(n))
                st = asyncio.run(night.run())
                live.update(_panel(night))
        else:                                # a pipe or a file: one plain line per event, as it happens
            night.on_log = _print_event
            st = asyncio.run(night.run())
    except KeyboardInterrupt:
        print(f"interrupted: stopped by the user; {night.again()} picks the session up", flush=True)
        return 130
    print(f"{st.status}: {st.reason}", flush=True)
    if st.status == "fatal":
        return EXIT_FATAL
    return 0 if st.status in ("done", "deadline") else 1


PIPE_QUIET = {"cli"}                         # the CLI's own stderr: in overnight.log only


def pipe_line(kind: str, text: str) -> str | None:
    """One event for a pipe: local time, kind, text; no colour or cursor codes, no wrapping."""
    return None if kind in PIPE_QUIET else f"{datetime.now():%H:%M:%S} {kind:<9} {text}"


def _print_event(kind: str, text: str) -> None:
    if (line := pipe_line(kind, text)) is not None:
        print(line, flush=True)
