"""Stop-hook decision time (prints numbers; not a test). Goal (issue 5): <= 0.5 s.

A throwaway project (real git) with --history decided experiments already in results.tsv and
on the run branch, then for each case: prepare the situation, and time one Stop hook call
  wired     : the exact command from .claude/settings.json through /bin/sh, JSON on stdin
              (what Claude Code waits for: interpreter start-up and imports included)
  in-process: autoresearch.loop.stop_hook(data) alone (the decision work itself)
Cases: keep (commit), discard (revert), crash (revert), confirm request, scratchpad nag, idle.

    .venv/bin/python bench/bench_stop.py [--history 100] [--repeat 5]

One experiment at a time; bench_night.py times waves of 16 as the history grows to 1,000.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autoresearch import loop  # noqa: E402
from autoresearch.ledger import current_best  # noqa: E402
from autoresearch.program import load_program  # noqa: E402
from loop_support import Project, clean_env, hook_command  # noqa: E402

GOAL_S = 0.5


def wired(p: Project) -> tuple[float, str]:
    data = json.dumps({"session_id": "bench", "cwd": str(p.path), "hook_event_name": "Stop",
                       "stop_hook_active": False})
    env = clean_env(CLAUDE_PROJECT_DIR=str(p.path), HOME=str(p.path.parent),
                    **{k: v for k, v in os.environ.items() if k.startswith("AUTORESEARCH_MAX")})
    t = time.perf_counter()
    r = subprocess.run(["/bin/sh", "-c", hook_command(p.path, "Stop")], cwd=p.path, env=env, input=data,
                       capture_output=True, text=True)
    return time.perf_counter() - t, r.stdout


def in_process(p: Project) -> tuple[float, str]:
    os.environ["CLAUDE_PROJECT_DIR"] = str(p.path)
    t = time.perf_counter()
    reply = loop.stop_hook({"session_id": "bench", "cwd": str(p.path), "stop_hook_active": False})
    return time.perf_counter() - t, json.dumps(reply)


def setup(p: Project, case: str, i: int) -> None:
    """Leave the project where the agent ends its turn for `case` (i keeps each edit unique)."""
    edit = lambda: p.edit("SAVE_MARGIN = ", f"SAVE_MARGIN = 0.0{i % 9 + 1} + 0 * ")  # noqa: E731
    if case == "keep":
        edit()
        best = current_best(p.path, load_program(p.path).metric)
        p.fake_run(value=best - 0.1)
        p.note(f"keep {i}")
    elif case == "discard":
        edit()
        p.fake_run(value=9.0)
        p.note(f"discard {i}")
    elif case == "crash":
        edit()
        p.fake_run(status="crash")
        p.note(f"crash {i}")
    elif case == "confirm":
        edit()
        best = current_best(p.path, load_program(p.path).metric)
        p.fake_run(value=best - 0.02)
        p.note(f"confirm {i}")
    elif case == "scratchpad nag":
        edit()
        p.fake_run(value=9.0)
    elif case == "idle":
        pass


def cleanup(p: Project, case: str) -> None:
    """Settle whatever the timed call left open, untimed."""
    if case in ("confirm", "scratchpad nag"):
        p.fake_run(value=9.0)
        p.note("settle")
        in_process(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", type=int, default=100, help="experiments already decided")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        # the project's key under the temporary folder, for the in-process and the wired calls alike
        # (the wired one runs with HOME set to the project's parent: with the key in ~/.config it
        # would time the "signing key missing" stop, not a decision)
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")
        os.environ["XDG_STATE_HOME"] = str(Path(tmp) / "state")
        p = Project.create(Path(tmp) / "proj")
        os.environ["AUTORESEARCH_MAX_EXPERIMENTS"] = "100000"
        os.environ["AUTORESEARCH_MAX_IDLE_STOPS"] = "100000"
        p.fake_run(value=3.0, desc="baseline")
        p.note("baseline")
        in_process(p)
        t = time.perf_counter()
        for i in range(args.history):
            setup(p, ("keep", "discard", "crash")[i % 3], i)
            in_process(p)
        console.print(f"history: {len(p.rows())} experiments decided in {time.perf_counter() - t:.1f} s; "
                      f"results.tsv {(p.path / 'results.tsv').stat().st_size // 1024} KiB")
        table = Table(title=f"Stop hook decision time, seconds (median / max of {args.repeat}; goal <= {GOAL_S})")
        for col in ("case", "wired median", "wired max", "in-process median", "in-process max"):
            table.add_column(col, justify="right" if col != "case" else "left")
        table.add_column("reply", no_wrap=True, max_width=40)
        worst = 0.0
        for case in ("keep", "discard", "crash", "confirm", "scratchpad nag", "idle"):
            w, ip, reply = [], [], ""
            for i in range(args.repeat):
                setup(p, case, 1000 + i)
                s, reply = wired(p)
                w.append(s)
                cleanup(p, case)
                setup(p, case, 2000 + i)
                s, _ = in_process(p)
                ip.append(s)
                cleanup(p, case)
            worst = max(worst, statistics.median(w))
            out = json.loads(reply) if reply.strip() else {}
            text = " ".join((out.get("reason") or out.get("systemMessage") or "(none)").split()[1:6])
            table.add_row(case, f"{statistics.median(w):.3f}", f"{max(w):.3f}", f"{statistics.median(ip):.3f}",
                          f"{max(ip):.3f}", text)
        console.print(table)
        verdict = "[green]meets[/]" if worst <= GOAL_S else "[red]misses[/]"
        console.print(f"worst wired median {worst:.3f} s: {verdict} the {GOAL_S} s goal")


if __name__ == "__main__":
    main()
