"""Clone to first decided experiment, per legacy fixture (prints numbers; not a test). Goal (issue
29): <= 5 minutes each, on a quiet machine, with no hand edit beyond init's flags and program.md's.

Runs tests/e2e/test_legacy_repos.py (nanoGPT-like, CLIP-like, Lightning-like: clone, init, its check
or doctor --trial, baseline, then a session of the real Claude Code CLI with a scripted model) and
reads each test's wall-clock marks (e2e/legacy.py Clock, from the clone on), then prints the table.
The load average before and after says how quiet the machine was.

    .venv/bin/python bench/bench_legacy.py [-k lightning]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 300.0
FIXTURES = ("nanogpt_like", "clip_like", "lightning_like")
FIRST = "first experiment decided"
ORDER = ("init", "doctor --trial", "baseline measured", "baseline decided", FIRST, "session ended")


def marks(output: str) -> dict[str, dict[str, float]]:
    """`fixture: name 1.2 s, name 3.4 s` lines (Clock.report) -> {fixture: {name: seconds}}."""
    out: dict[str, dict[str, float]] = {}
    for line in output.splitlines():
        m = re.match(rf"^({'|'.join(FIXTURES)}): (.+ s)$", line.strip())
        if m:
            out[m.group(1)] = {k: float(v) for k, v in re.findall(r"([a-z -]+?) ([0-9.]+) s(?:, |$)", m.group(2))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="pytest -k expression (default: all three fixtures)")
    a = ap.parse_args()
    from rich.console import Console
    from rich.table import Table
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "tests/e2e/test_legacy_repos.py", "-q", "-s", "-p", "no:cacheprovider"]
    p = subprocess.run(cmd + (["-k", a.k] if a.k else []), cwd=ROOT, capture_output=True, text=True)
    wall, load1 = time.monotonic() - t0, os.getloadavg()[0]
    got = marks(p.stdout)
    seen = {k for ms in got.values() for k in ms}
    names = [n for n in ORDER if n in seen] + sorted(seen - set(ORDER))
    table = Table(title=f"clone -> first decided experiment (goal <= {GOAL_S:g} s), seconds from the clone")
    table.add_column("fixture")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("goal")
    for fx, ms in got.items():
        first = ms.get(FIRST)
        table.add_row(fx, *(f"{ms[n]:.1f}" if n in ms else "-" for n in names),
                      "-" if first is None else ("ok" if first <= GOAL_S else "OVER"))
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print(f"pytest exit {p.returncode}, {wall:.0f} s in all; load average {load0:.2f} before, {load1:.2f} "
                  f"after, on {os.cpu_count()} cores")
    if p.returncode != 0:
        console.print(p.stdout[-3000:], markup=False)
    return 0 if p.returncode == 0 and all(ms.get(FIRST, GOAL_S + 1) <= GOAL_S for ms in got.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
