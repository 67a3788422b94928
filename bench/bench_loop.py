"""The loop through the real Claude Code CLI, start to start (prints numbers; not a test).

A scripted model that thinks for no time (tests/e2e/fake_api.py) runs N experiments: the
baseline, then one learning-rate edit each, a scratchpad note and the end of its turn. Everything
else is real: the CLI and its hooks (the guard on every tool call, the Stop hook deciding each
run), ./run.sh training for the budget in the sandbox and the trusted evaluator. What is left
between one run's start and the next, beyond the budget, is what the harness costs the night.
Goal (issue 27): at most 3 s an experiment at a 15 s budget.

    .venv/bin/python bench/bench_loop.py [--budget 15] [--experiments 5] [--think 0] [--warm] [--json]

--think S: the model takes S seconds before each edit (a real model's turn; the default is none).
--warm: AUTORESEARCH_WARM=1 (run/warm.py: the next run's sandboxes start while the model thinks).

Columns: `start to start` (from runs/NNNN's started_at to the next's), `run wall` (the runner's
own total, metrics.json total_seconds), `between runs` (the rest: the run's last line reaching the
model, its note, the Stop hook's decision, the next edit, ./run.sh's start). The load average
before and after says how quiet the machine was. Last, the machine's busy CPU-seconds per
experiment (/proc/stat, every process): wall >= busy / cores, so busy / cores - budget - think is
a floor on the overhead that no scheduling of the same work can beat on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
GOAL_S = 3.0
LRS = ("3e-3", "2e-3", "4e-3", "2.5e-3", "3.5e-3", "1.5e-3", "5e-3", "2.2e-3", "2.8e-3", "3.2e-3")


def script(n: int, think: float = 0.0):
    """Baseline, then n-1 experiments that each move the learning rate (a real diff each time),
    each edit `think` seconds after the turn before it."""
    from e2e.fake_api import Block, Turn, end_turn
    from e2e.story import change, note, run_experiment
    turns = [run_experiment("baseline"), note("1 | baseline | see run 0001 | the reference"), end_turn("Baseline.")]
    thinking = Turn((Block("action", action=lambda: time.sleep(think)),)) if think > 0 else Turn()
    for i in range(1, n):
        old, new = LRS[(i - 1) % len(LRS)], LRS[i % len(LRS)]
        turns += [thinking + change(f"LEARNING_RATE = {old}", f"LEARNING_RATE = {new}"), run_experiment(f"LR {new}"),
                  note(f"{i + 1} | LR {new} | see run {i + 1:04d} | -"), end_turn(f"LR {new} measured.")]
    return turns


def busy_cpu_s() -> float:
    """CPU-seconds this machine has been busy since boot: every core, every process (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class BusySampler:
    """(time, busy CPU-seconds) every 50 ms while the session runs, to read the machine's busy time
    between any two runs' starts."""

    def __init__(self) -> None:
        import threading
        self.points: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.points.append((time.time(), busy_cpu_s()))
            time.sleep(0.05)

    def __enter__(self) -> "BusySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def at(self, t: float) -> float:
        return min(self.points, key=lambda p: abs(p[0] - t))[1]


def cpu_floor(sampler: BusySampler, starts: list[float], budget: float, think: float) -> dict:
    """The machine's busy CPU-seconds per experiment, start to start, and what they imply: the
    whole machine cannot do that work in less wall time than busy / cores, so no scheduling of
    it here costs less than busy / cores - budget - think an experiment (training itself can use
    at most budget x cores of it; the rest is the harness's, the CLI's and anything else's)."""
    if len(starts) < 2 or not sampler.points:
        return {}
    cores = os.cpu_count() or 1
    per = (sampler.at(starts[-1]) - sampler.at(starts[0])) / (len(starts) - 1)
    return {"busy_cpu_s_per_experiment": round(per, 2), "cores": cores,
            "beyond_training_cpu_s": round(max(0.0, per - budget * cores), 2),
            "floor_overhead_s": round(max(0.0, per / cores - budget - think), 2)}


def measure(budget: float, n: int, work: Path, think: float = 0.0, warm: bool = False) -> dict:
    from e2e.fake_api import FakeAPI
    from e2e.harness import make_project, run_claude
    proj = make_project(work)
    t0 = time.monotonic()
    with FakeAPI(project=str(proj.root)) as fake, BusySampler() as sampler:
        fake.script = script(n, think)
        env = {"AUTORESEARCH_MAX_EXPERIMENTS": str(n), "AUTORESEARCH_TRAIN_SECONDS": f"{budget:g}"}
        run = run_claude(proj, fake.url, "Follow program.md. Start now.",
                         env={**env, "AUTORESEARCH_WARM": "1"} if warm else env, timeout=n * (budget + think + 240))
    if warm:                                  # the holder of a next run nobody asks for, in the CLI's state folder
        from autoresearch.run.warm import discard_all
        os.environ.update({k: v for k, v in proj.env.items() if k in ("XDG_STATE_HOME", "AUTORESEARCH_STATE")})
        discard_all(proj.root.resolve())
    session = time.monotonic() - t0
    runs = []
    for d in sorted((proj.root / "runs").glob("[0-9][0-9][0-9][0-9]")):
        m = json.loads((d / "metrics.json").read_text())
        x = m.get("extra") or {}
        how = (f"warm {x['warm_waited_seconds']:.1f}+{x.get('servers_warm_seconds', 0):.1f} s"
               if "warm_waited_seconds" in x else "given up" if "warm" in x else "cold")
        runs.append({"run": d.name, "status": m["status"], "backend": m.get("sandbox"), "wall": m.get("total_seconds"),
                     "started": datetime.fromisoformat(m["started_at"]).timestamp(), "how": how,
                     "startup_s": x.get("startup_seconds")})
    rows = []
    for a, b in zip(runs, runs[1:]):
        s2s = b["started"] - a["started"]
        rows.append({"run": a["run"], "status": a["status"], "sandboxes": a["how"], "startup_s": a["startup_s"],
                     "start_to_start_s": round(s2s, 2),
                     "run_wall_s": a["wall"], "between_runs_s": round(s2s - (a["wall"] or 0), 2),
                     "overhead_s": round(s2s - budget - think, 2)})
    over = [r["overhead_s"] for r in rows]
    return {**cpu_floor(sampler, [r["started"] for r in runs], budget, think),
            "backends": sorted({r["backend"] for r in runs if r["backend"]}),"budget_s": budget, "think_s": think, "warm": warm, "experiments": len(runs), "session_s": round(session, 1), "rows": rows,
            "median_overhead_s": round(statistics.median(over), 2) if over else None, "goal_s": GOAL_S,
            "cli_rc": run.returncode, "cli_result": run.result.get("subtype") if run.events else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of training per experiment")
    ap.add_argument("--experiments", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--think", type=float, default=0.0, help="seconds the model takes before each edit")
    ap.add_argument("--warm", action="store_true", help="AUTORESEARCH_WARM=1: the next run warmed while it thinks")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        res = measure(a.budget, a.experiments, Path(tmp), a.think, a.warm)
    res["load_before"], res["load_after"] = round(load0, 2), round(os.getloadavg()[0], 2)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"the loop through the real CLI, {a.budget:g} s budget, {a.think:g} s thinking"
                    f"{', warm' if a.warm else ''} (goal <= {GOAL_S:g} s an experiment beyond both)")
    for c in ("run", "status", "sandboxes", "TRAIN start-up s", "start to start s", "run wall s", "between runs s",
              "overhead s"):
        t.add_column(c, justify="right")
    for r in res["rows"]:
        t.add_row(r["run"], r["status"], r["sandboxes"], f"{r['startup_s'] or 0:.2f}",
                  f"{r['start_to_start_s']:.2f}", f"{r['run_wall_s'] or 0:.2f}",
                  f"{r['between_runs_s']:.2f}", f"{r['overhead_s']:.2f}")
    c = Console()
    c.print(t)
    c.print(f"median overhead {res['median_overhead_s']} s an experiment beyond the budget "
            f"({res['experiments']} runs, {'/'.join(res['backends'])}, session {res['session_s']} s, "
            f"CLI {res['cli_result']}); "
            f"load {res['load_before']} -> {res['load_after']}")
    if "floor_overhead_s" in res and not a.think:          # (the model's idle thinking makes the bound empty)
        c.print(f"the machine was busy {res['busy_cpu_s_per_experiment']} CPU-s an experiment, start to start "
                f"({res['beyond_training_cpu_s']} beyond budget x {res['cores']} cores): on this machine no "
                f"schedule of that work costs less than {res['floor_overhead_s']} s an experiment beyond the budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
