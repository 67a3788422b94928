"""How long the guard takes to decide, against a bare interpreter start.

Every tool call the agent makes waits for the PreToolUse hook, so its cost is start-up cost.
This runs the exact command wired in .claude/settings.json (`sh -c`, JSON on stdin, as Claude
Code does) for a few representative calls, interleaved with `python -c pass` from the same
virtualenv, and prints the medians. Goal: each wired decision <= 1.5x the bare start.

    .venv/bin/python bench/bench_guard.py [-n 40]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
GOAL = 1.5

CALLS = {
    "Bash ./run.sh -m (allow)": ("Bash", {"command": './run.sh -m "try a smaller learning rate"'}),
    "Bash pip install (deny)": ("Bash", {"command": "pip install requests"}),
    "Bash git log --oneline -n 5 (allow)": ("Bash", {"command": "git log --oneline -n 5"}),
    "Bash head -n 20 train.py (allow)": ("Bash", {"command": "head -n 20 train.py"}),
    "Bash split word (deny)": ("Bash", {"command": '"comm"\\and python3 train.py'}),
    "Edit train.py (allow)": ("Edit", {"file_path": str(ROOT / "train.py"), "old_string": "a", "new_string": "b"}),
    "Edit prepare.py (deny)": ("Edit", {"file_path": str(ROOT / "prepare.py"), "old_string": "a", "new_string": "b"}),
    "Read ~/.ssh/id_rsa (deny)": ("Read", {"file_path": os.path.expanduser("~/.ssh/id_rsa")}),
    "Read train.py (allow)": ("Read", {"file_path": str(ROOT / "train.py")}),
    "Read runs/0001/out/model.pt (deny)": ("Read", {"file_path": str(ROOT / "runs" / "0001" / "out" / "model.pt")}),
    "Grep the project (allow)": ("Grep", {"pattern": "LEARNING_RATE"}),
    "Bash grep -rn autoresearch/guard (allow)": ("Bash", {"command": 'grep -rn "def match" autoresearch/guard'}),
    "Bash find autoresearch -name (allow)": ("Bash", {"command": 'find autoresearch -name "*.py"'}),
    "Bash git show HEAD~1:train.py (allow)": ("Bash", {"command": "git show HEAD~1:train.py"}),
    "Bash git grep -n (allow: git ls-files)": ("Bash", {"command": 'git grep -n "def match" -- autoresearch/guard'}),
    "Bash grep -rn . (deny + suggestion)": ("Bash", {"command": "grep -rn LEARNING_RATE ."}),
}


def wired_command() -> str:
    [group] = json.loads((ROOT / ".claude" / "settings.json").read_text())["hooks"]["PreToolUse"]
    return group["hooks"][0]["command"]


def timed(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, input=stdin, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0, p.stdout


def decision(out: bytes) -> str:
    try:
        return json.loads(out)["hookSpecificOutput"]["permissionDecision"]
    except (ValueError, KeyError):
        return "none"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40, help="runs per row (default 40)")
    args = ap.parse_args()
    env = dict(os.environ, CLAUDE_PROJECT_DIR=str(ROOT))
    cmd = ["sh", "-c", wired_command()]
    payloads = {name: json.dumps({"session_id": "bench", "cwd": str(ROOT), "hook_event_name": "PreToolUse",
                                  "tool_name": tool, "tool_input": inp, "tool_use_id": "t"}).encode()
                for name, (tool, inp) in CALLS.items()}
    for name, data in payloads.items():                     # warm the policy cache and the page cache
        _, out = timed(cmd, data, env)
        assert decision(out) in ("allow", "deny"), (name, out)
    bare: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in CALLS}
    verdict: dict[str, str] = {}
    for _ in range(args.n):                                 # interleaved, so load drifts hit all rows alike
        bare.append(timed([str(PYTHON), "-c", "pass"], b"", env)[0])
        for name, data in payloads.items():
            t, out = timed(cmd, data, env)
            times[name].append(t)
            verdict[name] = decision(out)
    # a cold policy: program.md changed since the last call, so pydantic + YAML run once
    cold = []
    for _ in range(max(3, args.n // 10)):
        (ROOT / ".autoresearch" / "guard-policy.json").unlink(missing_ok=True)
        cold.append(timed(cmd, payloads["Edit train.py (allow)"], env)[0])

    from rich.console import Console
    from rich.table import Table
    base = statistics.median(bare)
    table = Table(title=f"guard decision time (median of {args.n}; {sys.implementation.name} "
                        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    table.add_column("call")
    table.add_column("decision")
    table.add_column("median ms", justify="right")
    table.add_column("x bare python", justify="right")
    table.add_row("bare `python -c pass` (same venv)", "", f"{base * 1000:.1f}", "1.00")
    worst = 0.0
    for name, ts in times.items():
        m = statistics.median(ts)
        worst = max(worst, m / base)
        style = "green" if m / base <= GOAL else "red"
        table.add_row(name, verdict[name], f"{m * 1000:.1f}", f"[{style}]{m / base:.2f}[/]")
    c = statistics.median(cold)
    table.add_row("Edit train.py, policy cache cold (once per program.md change)", "allow",
                  f"{c * 1000:.1f}", f"{c / base:.2f}")
    Console().print(table)
    print(f"worst warm ratio: {worst:.2f}x bare python (goal <= {GOAL}x): {'OK' if worst <= GOAL else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
