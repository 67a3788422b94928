"""Throughput of waves: experiments decided per hour with S slots at a training budget of B
seconds, against the ideal S x 3600 / B (every slot training all the time), measured in one run.

    .venv/bin/python bench/bench_waves.py [--slots 2] [--budget 20] [--runs 4] [--backend bwrap]
                                          [--executor local|ray]

--executor ray starts a real 2-node Ray cluster on this machine (tests/ray_support.py: a head and a
second node, each {"slot": 2}; each run asks for {"slot": 2}, so one run per node at a time) and
stops it after.

A throwaway project (this repo's train.py and prepare.py, program.md with executor: {kind: local,
slots: S}); R runs queued at once with `./run.sh -m ... --queue` (distinct seeds), `./run.sh --wait`,
then the Stop hook decides the wave. The clock runs from the first --queue to the decision written;
decided = the wave's ledger rows. The gap to the ideal is what a run costs beyond its budget:
sandbox start-up, the EVAL stage, the scheduler's polling, and the decision.

cpu_ceiling: the machine's busy CPU-seconds over the wave (/proc/stat, every process, the training
included) divided by its cores is a wall time no schedule of the same work beats here, so
decided x B / S over it is the best fraction of the ideal this work allows on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def project(dest: Path, slots: int, budget: float, backend: str, address: str | None = None) -> Path:
    from experiment_support import git_env, make_project
    extra = f"executor: {{kind: local, slots: {slots}}}" if address is None else \
        f"executor: {{kind: ray, slots: {slots}, address: '{address}', resources: {{slot: 2}}}}"
    make_project(dest, train_seconds=budget, grace_seconds=60, eval_seconds=120, extra=extra)
    text = (dest / "program.md").read_text()
    (dest / "program.md").write_text(re.sub(r"backend: \w+", f"backend: {backend}", text, count=1))
    (dest / "scratchpad.md").write_text("# notes\n")
    env = git_env()
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--no-verify", "-m", "bench project"], cwd=dest, check=True, env=env)
    return dest


def breakdown(proj: Path, slots: int, wall: float) -> dict:
    """Slot-seconds (slots x wall) split by where they went, summed over the wave's runs:
    budget (the ideal's share), train_over (TRAIN beyond its budget: sandbox start-up, imports,
    data, checkpoint), eval (the EVAL stage), harness (the runner outside its stages: snapshot,
    work copies, records), dispatch (claimed by the scheduler to the run starting: locally, to the
    runner's clock starting, its interpreter start-up; on Ray, to the task starting on its node:
    the package and the submission through the scheduler's driver, the record's extra.dispatch_s),
    node_setup (Ray: the task on its node to the runner's clock: unpack, commit, prepare.py, the
    runner's interpreter), return (the runner's end to its slot freed: for Ray, the results coming
    back), and idle (the rest: waiting for --queue, polling, the decision after the last run)."""
    from autoresearch.record.metrics import load_verified
    from autoresearch.record.queue import read_entry
    out = dict.fromkeys(("budget", "train_over", "eval", "harness", "dispatch", "node_setup", "return"), 0.0)
    for d in sorted((proj / "runs").iterdir()):
        m, _ = load_verified(d)
        e = read_entry(d)
        if m is None or e is None or m.total_seconds is None:
            continue
        out["budget"] += m.budget_seconds
        out["train_over"] += (m.train_seconds or 0) - m.budget_seconds
        out["eval"] += m.eval_seconds or 0
        out["harness"] += m.total_seconds - (m.train_seconds or 0) - (m.eval_seconds or 0)
        run_start = (m.finished_at - timedelta(seconds=m.total_seconds)) if m.finished_at else None
        if e.started_at and run_start:
            to_clock = (run_start - e.started_at).total_seconds()
            on_node = m.extra.get("dispatch_s")
            out["dispatch"] += to_clock if on_node is None else on_node
            out["node_setup"] += 0.0 if on_node is None else to_clock - on_node
        if e.finished_at and m.finished_at:
            out["return"] += (e.finished_at - m.finished_at).total_seconds()
    out["idle"] = slots * wall - sum(out.values())
    return {k: round(v, 1) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=0, help="runs in the wave (default 2 x slots)")
    ap.add_argument("--backend", default="bwrap")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway project (its path is printed)")
    args = ap.parse_args()
    n = args.runs or 2 * args.slots
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-waves-"))
    cluster = None
    try:
        if args.executor == "ray":
            from ray_support import start_cluster
            cluster = start_cluster()
        proj = project(tmp / "proj", args.slots, args.budget, args.backend, cluster and cluster.address)
        from autoresearch.ledger import read_rows
        from autoresearch.loop import stop_hook
        from bench_loop import busy_cpu_s
        t0, busy0 = time.monotonic(), busy_cpu_s()
        for i in range(n):
            r = subprocess.run([str(ROOT / "run.sh"), "-m", f"bench run {i}", "--queue", "--seed", str(i)],
                               cwd=proj, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        while True:          # --wait returns before the agent's Bash timeout and says to wait again
            r = subprocess.run([str(ROOT / "run.sh"), "--wait"], cwd=proj, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            print(r.stdout)
            if "--wait again" not in r.stdout:
                break
        with open(proj / "scratchpad.md", "a") as f:
            f.write("- the wave's results\n")
        reply = stop_hook({"cwd": str(proj), "session_id": "bench"})
        wall, busy = time.monotonic() - t0, busy_cpu_s() - busy0
        rows = [x for x in read_rows(proj) if x.session == "bench" or True]
        decided = len({x.run_id for x in rows} | {rid for x in rows for rid in x.runs})
        per_hour = decided * 3600 / wall
        ideal = args.slots * 3600 / args.budget
        went = breakdown(proj, args.slots, wall)
        print(json.dumps({"executor": args.executor, "slots": args.slots, "budget_s": args.budget, "runs": n, "decided": decided,
                          "wall_s": round(wall, 1), "decided_per_hour": round(per_hour, 1),
                          "ideal_per_hour": round(ideal, 1), "fraction_of_ideal": round(per_hour / ideal, 3),
                          "decision": (reply.get("reason") or reply.get("systemMessage") or "").splitlines()[0][:120],
                          "dispatch_per_run_s": round(went["dispatch"] / n, 2),
                          "busy_cpu_s_per_run": round(busy / n, 1),
                          "cpu_ceiling": round(min(1.0, decided * args.budget / args.slots / (busy / cores)), 3),
                          "where_the_time_went": went}, indent=2))
        if args.keep:
            print(f"project kept: {proj}")
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
