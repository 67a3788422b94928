"""Every hook's start-up, as Claude Code runs it, against a bare interpreter start, on a quiet machine.

Each hook event (PreToolUse, Stop, SessionStart, PreCompact) is run through the exact command
wired for it -- the project's .claude/settings.json and the plugin's hooks/hooks.json (its
interpreter found the way the plugin finds it) -- with `sh -c` and the JSON Claude Code sends,
in a throwaway git copy of this project (the Stop hook writes loop state). Runs are interleaved
with `python -c pass` and `python -I -S -c pass` from the same virtualenv, so a drift in load
hits every row alike. Prints min / median / p90 in ms and the median against the bare start.

Timings mean something only on a quiet machine: it waits (up to --wait seconds) for the 1-minute
load average to fall below --quiet x CPUs, and says so in the output when it did not.
bench/bench_guard.py times the guard's decisions one by one.

    .venv/bin/python bench/bench_hooks.py [-n 30] [--wait 120] [--quiet 0.25]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
sys.path.insert(0, str(ROOT))


def project(tmp: Path, name: str, plugin_only: bool = False) -> Path:
    """A committed copy of the project's own files; its code and venv linked, not copied. Plugin-only:
    its settings wire no hooks (as `init` from the plugin writes them), so the plugin's act."""
    p = tmp / name
    p.mkdir()
    for f in ("program.md", "train.py", "scratchpad.md", "prepare.py", "run.sh"):
        shutil.copy2(ROOT / f, p / f)
    shutil.copytree(ROOT / ".claude", p / ".claude")
    if plugin_only:
        settings = json.loads((p / ".claude" / "settings.json").read_text())
        settings.pop("hooks")
        (p / ".claude" / "settings.json").write_text(json.dumps(settings, indent=2))
    for d in ("hooks", "autoresearch", ".venv"):
        (p / d).symlink_to(ROOT / d)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "core.hooksPath=/dev/null"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(p)], check=True)
    subprocess.run([*git, "-C", str(p), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(p), "commit", "-qm", "bench"], check=True)
    return p


def inputs(p: Path) -> dict[str, dict]:
    base = {"session_id": "bench", "transcript_path": str(p / "transcript.jsonl"), "cwd": str(p),
            "permission_mode": "default"}
    return {
        "PreToolUse": {**base, "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_use_id": "t",
                       "tool_input": {"command": "git log --oneline -n 5"}},
        "Stop": {**base, "hook_event_name": "Stop", "stop_hook_active": False, "last_assistant_message": "done"},
        "SessionStart": {**base, "hook_event_name": "SessionStart", "source": "startup"},
        "PreCompact": {**base, "hook_event_name": "PreCompact", "trigger": "auto", "custom_instructions": ""},
    }


def commands(p: Path, alone: Path) -> dict[str, tuple[str, Path, dict[str, str]]]:
    """(label -> (hook command, project, extra environment)): the project's own wiring; the plugin's
    beside it (its loop hooks step aside); the plugin's alone, in a plugin-only project."""
    plugin = {"CLAUDE_PLUGIN_ROOT": str(ROOT)}
    out = {}
    for origin, path, proj, env in (("project", p / ".claude" / "settings.json", p, {}),
                                    ("plugin + project", ROOT / "hooks" / "hooks.json", p, plugin),
                                    ("plugin-only", ROOT / "hooks" / "hooks.json", alone, plugin)):
        hooks = json.loads(path.read_text())["hooks"]
        for event, groups in hooks.items():
            for g in groups:
                for h in g["hooks"]:
                    out[f"{origin} {event}"] = (h["command"], proj, env)
    return out


def quiet(limit: float, wait: float) -> str:
    """Wait for a quiet machine; the load average seen, and whether it was quiet."""
    cpus = os.cpu_count() or 1
    end = time.monotonic() + wait
    while True:
        load = os.getloadavg()[0]
        if load < limit * cpus:
            return f"load {load:.2f} on {cpus} CPUs: quiet"
        if time.monotonic() >= end:
            return f"load {load:.2f} on {cpus} CPUs: NOT QUIET (above {limit * cpus:.2f}); the numbers are inflated"
        time.sleep(5)


def timed(argv: list[str], stdin: bytes, cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd, env=env)
    return time.perf_counter() - t0, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="runs per row (default 30)")
    ap.add_argument("--wait", type=float, default=120, help="seconds to wait for a quiet machine (default 120)")
    ap.add_argument("--quiet", type=float, default=0.25, help="quiet: 1-minute load below this x CPUs (0.25)")
    args = ap.parse_args()
    before = quiet(args.quiet, args.wait)
    with tempfile.TemporaryDirectory() as tmp:
        p, alone = project(Path(tmp), "proj"), project(Path(tmp), "alone", plugin_only=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE", "ANTHROPIC"))}
        env |= {"HOME": str(Path(tmp) / "home"), "AUTORESEARCH_MAX_EXPERIMENTS": "0"}
        rows = {}
        for label, (cmd, proj, extra) in commands(p, alone).items():
            stdin = json.dumps(inputs(proj)[label.split()[-1]]).encode()
            rows[label] = (cmd, stdin, proj, {**env, **extra, "CLAUDE_PROJECT_DIR": str(proj)})
        bare = {"bare `python -c pass`": [str(PYTHON), "-c", "pass"],
                "bare `python -I -S -c pass`": [str(PYTHON), "-I", "-S", "-c", "pass"]}
        for label, (cmd, stdin, proj, e) in rows.items():      # warm: policy cache, page cache, first state
            timed(["sh", "-c", cmd], stdin, proj, e)
        times: dict[str, list[float]] = {k: [] for k in [*bare, *rows]}
        codes: dict[str, set[int]] = {k: set() for k in rows}
        for _ in range(args.n):
            for label, argv in bare.items():
                times[label].append(timed(argv, b"", p, env)[0])
            for label, (cmd, stdin, proj, e) in rows.items():
                t, rc = timed(["sh", "-c", cmd], stdin, proj, e)
                times[label].append(t)
                codes[label].add(rc)
    after = quiet(args.quiet, 0)
    base = statistics.median(times["bare `python -c pass`"])
    print(f"hook start-up, {args.n} runs each, interleaved ({sys.implementation.name} {sys.version.split()[0]})")
    print(f"before: {before}\nafter:  {after}")
    print(f"{'row':<34} {'min ms':>8} {'median':>8} {'p90':>8} {'x bare':>7}  exit")
    for label, ts in times.items():
        ts = sorted(ts)
        med = statistics.median(ts)
        p90 = ts[min(len(ts) - 1, int(0.9 * len(ts)))]
        rc = ",".join(map(str, sorted(codes.get(label, set())))) or "-"
        print(f"{label:<34} {ts[0] * 1e3:8.1f} {med * 1e3:8.1f} {p90 * 1e3:8.1f} {med / base:7.2f}  {rc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
