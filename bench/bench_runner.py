"""Harness overhead of the experiment runner, per sandbox backend (prints numbers; not a test).

  stage   : one sandbox stage start-up + tear-down = backend.run() wall time for `python -c pass`
            minus the same command run directly (median of --repeat runs). An experiment has two.
            `session MB/s`: a model server's answers through a stage's session (150 MB for the
            default EVAL; docker's go over two FIFOs, sandbox/fifos.py, not the attach stream).
  full    : (with --full) ./run.sh wall time - train seconds - eval seconds, at --budget seconds
            (issue 3's definition), in a throwaway copy of the project so nothing here changes.
            "overhead" takes the stages' wall times as train/eval seconds (what runs outside the
            sandboxes); "all-in" takes the budget and the evaluator's own probe + scoring time
            (so sandbox start-up, torch imports, checkpoint save and load count too).

Goals (issue 27): all-in overhead <= 2 s with bwrap, <= 3 s with docker, on a quiet machine.
With --full it also prints where the all-in seconds go (from the run's metrics.json). With --warm
(AUTORESEARCH_WARM=1, run/warm.py) it times the second of two runs, --think seconds apart (the
agent's turn, while the next run's sandboxes warm up).

    .venv/bin/python bench/bench_runner.py [--full [--warm [--think 20]]] [--budget 30] [--repeat 7]
                                           [--backends docker bwrap none]
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
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autoresearch.sandbox import SandboxSpec, SandboxUnavailable, choose_backend  # noqa: E402


def stage_overhead(name: str, repeat: int) -> tuple[float, float, float]:
    """(median run() wall, median direct wall, first-run wall incl. one-time setup) in seconds."""
    t0 = time.perf_counter()
    b = choose_backend(name)
    rt = b.runtime()
    first_setup = time.perf_counter() - t0
    spec = SandboxSpec(argv=[rt.python, "-c", "pass"], mounts=rt.mounts, env=dict(rt.env), cwd="/tmp",
                       timeout_s=60, memory_bytes=1 << 30)
    walls, direct = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        r = b.run(spec)
        walls.append(time.perf_counter() - t)
        assert r.exit_code == 0, r
        t = time.perf_counter()
        subprocess.run([rt.python if Path(rt.python).exists() else sys.executable, "-c", "pass"], check=True)
        direct.append(time.perf_counter() - t)
    return statistics.median(walls), statistics.median(direct), first_setup


ANSWER = "import os, sys\nn = int(sys.argv[1])\nwhile os.read(0, 1):\n    os.write(1, bytes(n))\n"


def session_rate(name: str, requests: int = 72, size: int = 2_000_000) -> float:
    """MB/s of a model server's answers through a stage's session (a byte asks for `size` bytes back,
    as the scorer asks for a batch's logits: about 150 MB for the default task's EVAL)."""
    b = choose_backend(name)
    rt = b.runtime()
    took: list[float] = []

    def session(w, r) -> None:
        t = time.perf_counter()
        for _ in range(requests):
            w.write(b"?")
            w.flush()
            got = 0
            while got < size:
                chunk = r.read1(1 << 20)
                assert chunk, "the session ended early"
                got += len(chunk)
        took.append(time.perf_counter() - t)

    r = b.run(SandboxSpec(argv=[rt.python, "-c", ANSWER, str(size)], mounts=rt.mounts, env=dict(rt.env), cwd="/tmp",
                          timeout_s=120, memory_bytes=1 << 30, session=session))
    assert took and r.exit_code == 0, r
    return requests * size / 1e6 / took[0]


def project_copy(dest: Path) -> Path:
    """The tracked project files plus a link to the real .venv, in a fresh git repo."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    (dest / ".venv").symlink_to((ROOT / ".venv").resolve())   # one hop: the sandbox mounts the resolved venv
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=bench@localhost",
                                                  "commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def full_overhead(name: str, budget: float, proj: Path, think: float | None = None) -> dict:
    """One ./run.sh timed (`think`: warm, after a first run and that many seconds of waiting)."""
    env = dict(os.environ)
    argv = ["./run.sh", "-m", f"bench {name}", "--budget", str(budget), "--backend", name]
    if think is not None:
        env["AUTORESEARCH_WARM"] = "1"
        subprocess.run(argv, cwd=proj, capture_output=True, text=True, env=env)
        time.sleep(think)
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=proj, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if think is not None:
        from autoresearch.run.warm import discard_all
        discard_all(proj.resolve())
    runs = sorted((proj / "runs").glob("[0-9]*"))
    m = json.loads((runs[-1] / "metrics.json").read_text()) if runs else {}
    if p.returncode != 0 or m.get("status") != "ok":
        return {"error": (p.stdout + p.stderr)[-600:], "status": m.get("status")}
    train, ev = m.get("train_seconds") or 0.0, m.get("eval_seconds") or 0.0
    x = m.get("extra") or {}
    compute = x.get("eval_score_seconds") or 0.0
    # overhead: outside the two sandboxes. all-in: everything but the training budget and the
    # scoring requests (so sandbox start-up, two torch imports, data and model
    # loading, checkpoint save and the early stop margin all count).
    total = m.get("total_seconds") or wall
    startup = x.get("startup_seconds") or 0.0
    agent = m.get("agent_seconds") or train
    load = x.get("eval_load_seconds") or 0.0
    ev_wall = x.get("eval_wall_seconds") or ev           # GO to both servers' sandboxes gone
    servers_warm = x.get("servers_warm_seconds") or 0.0  # warm: TRAIN's GO waited for the servers' warm-up
    # Where the all-in seconds go, in the order they happen (each a wall-clock interval; the
    # servers' load overlaps TRAIN once they are warmed early, so it is counted as it waits).
    parts = {"run.sh + runner start-up (before the run's clock)": wall - total,
             "runner: prepare, diff, work copies, records": total - train - ev_wall - servers_warm,
             "TRAIN trusted warm-up (interpreter, torch; cold: the work copies and servers' start beside it)": startup,
             "warm: GO waited for the model servers' warm-up": servers_warm,
             "TRAIN agent code past the budget (save, exit)": agent - budget,
             "TRAIN sandbox start + tear-down": train - startup - agent,
             "EVAL servers after GO: agent import + checkpoint load": load,
             "EVAL after GO: scorer, sandboxes ending": ev_wall - load - compute}
    return {"wall": wall, "train": train, "eval": ev, "overhead": wall - train - ev,
            "compute": compute, "all_in": wall - budget - compute, "parts": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["docker", "bwrap", "none"])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--full", action="store_true", help="also time ./run.sh end to end")
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--warm", action="store_true", help="with --full: the next run's sandboxes warmed (run/warm.py)")
    ap.add_argument("--think", type=float, default=20.0, help="with --warm: seconds between the two runs")
    args = ap.parse_args()
    console = Console()

    t = Table(title="sandbox stage overhead (python -c pass)")
    for col in ("backend", "run() wall s", "direct s", "overhead per stage s", "x2 stages s", "one-time setup s",
                "session MB/s"):
        t.add_column(col, justify="right" if col != "backend" else "left")
    avail = []
    for name in args.backends:
        try:
            wall, direct, setup = stage_overhead(name, args.repeat)
        except SandboxUnavailable as e:
            t.add_row(name, "-", "-", f"unavailable: {e}"[:60], "-", "-", "-")
            continue
        avail.append(name)
        t.add_row(name, f"{wall:.3f}", f"{direct:.3f}", f"{wall - direct:.3f}", f"{2 * (wall - direct):.3f}",
                  f"{setup:.3f}", f"{session_rate(name):.0f}")
    console.print(t)

    if not args.full:
        return
    goals = {"bwrap": 2.0, "docker": 3.0}
    t = Table(title=f"./run.sh harness overhead at a {args.budget:g} s budget" + (" (warm)" if args.warm else ""))
    for col in ("backend", "run.sh wall s", "train stage s", "eval stage s", "overhead s",
                "eval compute s", "all-in overhead s", "goal s"):
        t.add_column(col, justify="right" if col != "backend" else "left")
    breakdowns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        Path(tmp).chmod(0o755)              # docker's sandbox user must be able to enter the project
        proj = project_copy(Path(tmp))
        for name in avail:
            r = full_overhead(name, args.budget, proj, args.think if args.warm else None)
            if "error" in r:
                t.add_row(name, "failed", str(r.get("status")), "", r["error"][-60:], "")
                console.print(f"[red]{name} failed:[/red]\n{r['error']}")
                continue
            breakdowns[name] = r["parts"]
            goal = goals.get(name)
            ok = True
            ok_all = goal is None or r["all_in"] <= goal
            t.add_row(name, f"{r['wall']:.2f}", f"{r['train']:.2f}", f"{r['eval']:.2f}",
                      f"[{'green' if ok else 'red'}]{r['overhead']:.2f}[/]", f"{r['compute']:.2f}",
                      f"[{'green' if ok_all else 'red'}]{r['all_in']:.2f}[/]", f"{goal:g}" if goal else "-")
    console.print(t)
    for name, parts in breakdowns.items():
        b = Table(title=f"where the all-in seconds go ({name})")
        b.add_column("part")
        b.add_column("seconds", justify="right")
        for what, sec in parts.items():
            b.add_row(what, f"{sec:.2f}")
        b.add_row("[bold]sum (= all-in)[/]", f"[bold]{sum(parts.values()):.2f}[/]")
        console.print(b)


if __name__ == "__main__":
    main()
