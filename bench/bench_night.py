"""The simulated night (issue 27): what the harness costs as the history grows to ~1,000 experiments.

No training. A throwaway project (real git, its own signing key under a temporary
XDG_CONFIG_HOME) lives through a night at SkyPilot's scale: waves of 13-16 runs queued the way
`./run.sh --queue` queues them (record.queue: snapshot/, queue.json, a signed "queued" record),
"run" by a stand-in scheduler that claims each run, writes the signed metrics.json a finished runner
writes (RunMetrics.write) and marks it done -- the training stage takes no time, so the harness is
all that costs -- and each wave decided by the real Stop hook, which writes the ledger rows,
runs/NNNN/decision.json and the keep commits with their trailers. The history is therefore exactly
what a real night leaves behind.

At each history size N (rows in results.tsv) it times:
  stop wired    the Stop hook deciding a finished wave of 16, through the exact command in
                .claude/settings.json (interpreter start-up included: what Claude Code waits for)
  stop decide   the same decision in-process (loop.stop_hook: the decision work itself), on the next wave
  (cpu)         the CPU seconds each took, git's included: on a shared machine the wall clock measures
                the neighbours; CPU time is what a quiet machine would take, but for the disk's fsyncs
  status        autoresearch status (gather + render), in-process
  plot          autoresearch plot (progress.png), in-process
  rebuild       autoresearch ledger rebuild, in-process
and, from a profile of the in-process decision of the wave after, what it read: metrics.json records verified,
files read, queue.json files read, git processes started. Those counts are what
keep the decision flat: they depend on the wave, not on the history.

Dispatch per run (the Ray driver) is not measured here: it belongs to bench_waves.py and the Ray
executor; this bench's stand-in scheduler dispatches nothing.

    .venv/bin/python bench/bench_night.py                 # N = 100, 250, 500, 1000
    .venv/bin/python bench/bench_night.py --quick         # N = 16, 48; no plot, no wired call (a few seconds)
    .venv/bin/python bench/bench_night.py --json
    .venv/bin/python bench/bench_night.py --profile 1000  # cProfile of the decision at N=1000
"""
from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import json
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pydantic import BaseModel  # noqa: E402

from autoresearch import loop  # noqa: E402
from autoresearch.ledger import read_rows  # noqa: E402
from autoresearch.program import load_program  # noqa: E402
from autoresearch.record.identity import program_code, snapshot_files, snapshot_of  # noqa: E402
from autoresearch.record.layout import allocate_run_dir  # noqa: E402
from autoresearch.record.metrics import RunMetrics  # noqa: E402
from autoresearch.record.queue import SNAPSHOT_DIR, QueueEntry, claim, finish, pending_record  # noqa: E402
from loop_support import PROGRAM, Project, clean_env, fingerprint, hook_command  # noqa: E402

GOAL_S = 0.5
WAVE = 16
BUDGET = 300.0
NIGHT_PROGRAM = (PROGRAM.replace("train_seconds: 2,", f"train_seconds: {BUDGET:g},")
                 .replace("deadline_hours: 10\n", "")
                 .replace("sandbox: {backend: none}", "sandbox: {backend: none}\nexecutor: {kind: local, slots: 16}"))
# read while a Stop call decides (cProfile call counts): name -> (module file suffix, function)
COUNTED = {"metrics verified": ("record/metrics.py", "load_verified"),
           "files read": ("pathlib.py", "read_bytes|read_text"),
           "queue.json read": ("record/queue.py", "read_entry"),
           "git processes": ("autoresearch/gitops.py", "git")}


class Point(BaseModel):
    """One history size: seconds for each operation, and what the in-process decision read."""
    history: int
    stop_wired_s: float | None            # None in quick mode (no interpreter start-up measured)
    stop_wired_cpu_s: float | None        # its CPU seconds (user + sys, git children included)
    stop_decide_s: float
    stop_decide_cpu_s: float
    status_s: float
    plot_s: float | None                  # None in quick mode (matplotlib's import alone is a second)
    rebuild_s: float
    reads: dict[str, int]


class Night:
    """The project and its stand-in scheduler."""

    def __init__(self, tmp: Path, seed: int = 0):
        self.cfg = tmp / "config"
        os.environ["XDG_CONFIG_HOME"] = str(self.cfg)        # the project's key lives here, not in ~/.config
        os.environ["XDG_STATE_HOME"] = str(tmp / "state")    # and its state folder, not in ~/.local/state
        os.environ["AUTORESEARCH_MAX_EXPERIMENTS"] = "1000000"
        os.environ["AUTORESEARCH_MAX_IDLE_STOPS"] = "1000000"
        self.p = Project.create(tmp / "proj", program=NIGHT_PROGRAM)
        self.rng = random.Random(seed)
        self.best = 2.0
        self.n = 0

    @property
    def root(self) -> Path:
        return self.p.path

    def rows(self) -> int:
        return len(read_rows(self.root))

    def queue(self) -> QueueEntry:
        """The agent edits train.py and queues it (what queue_experiment writes, without its checks)."""
        self.n += 1
        with open(self.root / "train.py", "a") as f:
            f.write(f"# variant {self.n}\n")
        program = load_program(self.root)
        files = snapshot_files(self.root, program_code(program, self.root))
        d = allocate_run_dir(self.root)
        for rel, data in files.items():
            if data is not None:
                (d / SNAPSHOT_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
                (d / SNAPSHOT_DIR / rel).write_bytes(data)
        shutil.copy2(self.root / "train.py", d / "train.py")
        e = QueueEntry(run_id=d.name, message=f"idea {self.n}", budget_seconds=BUDGET, seed=int(d.name),
                       absent=sorted(r for r, x in files.items() if x is None),
                       queued_at=datetime.now(timezone.utc) - timedelta(seconds=BUDGET + 60),
                       snapshot=snapshot_of(files))
        pending_record(self.root, e, self.p.sha(), program, "queued, not started yet")
        e.write(self.root)
        return e

    def run(self, e: QueueEntry, slot: int, winner: bool) -> None:
        """The stand-in runner: claims the run, 'trains' for no time, writes the signed record and its files."""
        c = claim(self.root, e.run_id, slot)
        assert c is not None
        d = self.root / "runs" / e.run_id
        crash = not winner and self.rng.random() < 0.1
        value = None if crash else (self.best - 0.05 if winner else self.best + self.rng.uniform(0.05, 0.3))
        (d / "out").mkdir(exist_ok=True)
        (d / "out" / "model.pt").write_bytes(f"weights of {e.run_id}".encode())
        (d / "train.log").write_text("step 1 loss 5.5\n")
        start = datetime.now(timezone.utc) - timedelta(seconds=BUDGET + 30)
        RunMetrics(run_id=e.run_id, status="crash" if crash else "ok", metric_name="val_bpb", metric_value=value,
                   direction="minimize", train_py_sha256=RunMetrics.read(d).train_py_sha256, seed=e.seed,
                   budget_seconds=BUDGET, grace_seconds=30, train_seconds=BUDGET, sandbox="none",
                   description=e.message, reason="crash in the simulation" if crash else None, started_at=start,
                   finished_at=start + timedelta(seconds=BUDGET + 20), snapshot_sha256=e.snapshot,
                   fingerprint=fingerprint(BUDGET), steps_per_s=None if crash else 50.0, peak_memory_gb=0.25,
                   device="cpu").write(d)
        finish(self.root, e.run_id, "done")
        if value is not None and winner:
            self.best = value

    def wave(self, size: int) -> None:
        """Queue `size` variants, run them all (one in four waves has a keep), note the scratchpad."""
        keep = self.rng.random() < 0.25 or self.rows() == 0
        queued = [self.queue() for _ in range(size)]
        win = self.rng.randrange(size)
        for i, e in enumerate(queued):
            self.run(e, i % WAVE, keep and i == win)
        self.p.note(f"wave of {size} ending at {queued[-1].run_id}")

    def decide(self) -> dict:
        return loop.stop_hook({"session_id": "night", "cwd": str(self.root), "stop_hook_active": False})

    def decide_wired(self) -> tuple[float, float, dict]:
        data = json.dumps({"session_id": "night", "cwd": str(self.root), "hook_event_name": "Stop",
                           "stop_hook_active": False})
        env = clean_env(CLAUDE_PROJECT_DIR=str(self.root), HOME=str(self.root.parent), XDG_CONFIG_HOME=str(self.cfg),
                        AUTORESEARCH_MAX_EXPERIMENTS="1000000", AUTORESEARCH_MAX_IDLE_STOPS="1000000")
        t, c = time.perf_counter(), _cpu(children=True)
        r = subprocess.run(["/bin/sh", "-c", hook_command(self.root, "Stop")], cwd=self.root, env=env, input=data,
                           capture_output=True, text=True, timeout=120)
        return time.perf_counter() - t, _cpu(children=True) - c, json.loads(r.stdout) if r.stdout.strip() else {}

    def grow_to(self, n: int) -> None:
        """Waves of 13-16 (the last one cut to fit) until results.tsv has n rows."""
        while (have := self.rows()) < n:
            self.wave(min(self.rng.randint(13, 16), n - have) if have else 1)
            _expect_decided(self.decide(), self)


def _expect_decided(reply: dict, night: Night) -> None:
    text = reply.get("reason") or reply.get("systemMessage") or ""
    if reply.get("decision") != "block" or "wave of" not in text and "BASELINE" not in text:
        raise SystemExit(f"the Stop hook did not decide the wave: {text[:400]}")


def counts(prof: cProfile.Profile) -> dict[str, int]:
    st = pstats.Stats(prof)
    out = dict.fromkeys(COUNTED, 0)
    for (file, _, fn), (_, ncalls, *_rest) in st.stats.items():  # type: ignore[attr-defined]
        for what, (suffix, name) in COUNTED.items():
            if fn in name.split("|") and file.endswith(suffix):
                out[what] += ncalls
    return out


def _cpu(children: bool = False) -> float:
    """CPU seconds (user + sys) of this process and its waited-for children (git), or of the children
    alone: on a shared machine, what a quiet one would take, give or take the disk's fsyncs."""
    import resource
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    return kids.ru_utime + kids.ru_stime + (0.0 if children else me.ru_utime + me.ru_stime)


def timed(fn) -> float:
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        fn()
    return time.perf_counter() - t


def measure(night: Night, n: int, profile_out: Path | None = None, quick: bool = False) -> Point:
    """Grow to n rows; time status, plot and rebuild there, then decide a wave of 16 wired and one
    in-process (quick: no plot, no wired call)."""
    from autoresearch.cli.ledger import rebuild
    from autoresearch.cli.plot import main as plot
    from autoresearch.cli.status import gather, render
    from rich.console import Console

    night.grow_to(n)
    root = night.root

    def status() -> None:
        Console(file=io.StringIO(), width=140).print(render(gather(root)))
    t_status = timed(status)
    t_plot = None if quick else timed(lambda: plot(root, out=root.parent / "progress.png"))
    t_rebuild = timed(lambda: rebuild(root))
    if (have := night.rows()) != n:
        raise SystemExit(f"ledger rebuild changed the history: {have} rows, expected {n}")
    t_wired = c_wired = None
    if not quick:
        night.wave(WAVE)
        t_wired, c_wired, reply = night.decide_wired()
        _expect_decided(reply, night)
    night.wave(WAVE)
    t, c = time.perf_counter(), _cpu()
    reply = night.decide()
    t_decide, c_decide = time.perf_counter() - t, _cpu() - c
    _expect_decided(reply, night)
    night.wave(WAVE)                           # the next wave, profiled: what a decision reads
    prof = cProfile.Profile()
    prof.enable()
    reply = night.decide()
    prof.disable()
    _expect_decided(reply, night)
    if profile_out is not None:
        pstats.Stats(prof, stream=(s := io.StringIO())).sort_stats("cumulative").print_stats(45)
        profile_out.write_text(s.getvalue())
    return Point(history=n, stop_wired_s=t_wired, stop_wired_cpu_s=c_wired, stop_decide_s=t_decide,
                 stop_decide_cpu_s=c_decide, status_s=t_status, plot_s=t_plot,
                 rebuild_s=t_rebuild, reads=counts(prof))


QUICK = [16, 48]


def night(sizes: list[int], seed: int = 0, profile: int | None = None, quick: bool = False) -> list[Point]:
    """One simulated night, measured at each history size (ascending)."""
    with tempfile.TemporaryDirectory(prefix="bench-night-") as tmp:
        nt = Night(Path(tmp), seed)
        pts = []
        for n in sorted(sizes):
            out = Path(tempfile.gettempdir()) / f"bench-night-profile-{n}.txt" if n == profile else None
            pts.append(measure(nt, n, out, quick))
            if out is not None:
                print(f"profile of the decision at N={n}: {out}", file=sys.stderr)
        return pts


def table(pts: list[Point]):
    from rich.table import Table
    t = Table(title=f"The simulated night: seconds per operation as the history grows (wave of {WAVE}; "
                    f"Stop hook goal <= {GOAL_S} s)")
    for col in ("history", "stop wired", "(cpu)", "stop decide", "(cpu)", "status", "plot", "rebuild", *COUNTED):
        t.add_column(col, justify="right")
    for p in pts:
        t.add_row(str(p.history), _s(p.stop_wired_s), _s(p.stop_wired_cpu_s), _s(p.stop_decide_s),
                  _s(p.stop_decide_cpu_s), _s(p.status_s), _s(p.plot_s),
                  _s(p.rebuild_s), *(str(p.reads[k]) for k in COUNTED))
    return t


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,250,500,1000", help="history sizes (rows), comma-separated")
    ap.add_argument("--quick", action="store_true", help=f"N = {QUICK}, no plot, no wired call: a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the points as JSON")
    ap.add_argument("--profile", type=int, metavar="N", help="write a cProfile of the in-process decision at N")
    a = ap.parse_args()
    t = time.perf_counter()
    sizes = QUICK if a.quick else [int(x) for x in a.sizes.split(",")]
    pts = night(sizes, a.seed, a.profile, a.quick)
    if a.json:
        print(json.dumps([p.model_dump() for p in pts], indent=2))
        return
    from rich.console import Console
    c = Console(width=160)
    c.print(table(pts))
    last = pts[-1]
    worst = last.stop_wired_s if last.stop_wired_s is not None else last.stop_decide_s
    verdict = "[green]meets[/]" if worst <= GOAL_S else "[red]misses[/]"
    c.print(f"Stop hook for a wave of {WAVE} at {last.history} rows: {_s(last.stop_wired_s)} s wired, "
            f"{_s(last.stop_wired_cpu_s)} s of CPU ({last.stop_decide_s:.3f} s in-process): {verdict} the {GOAL_S} s "
            f"goal. Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. "
            f"Whole night simulated in {time.perf_counter() - t:.0f} s.")


if __name__ == "__main__":
    main()
