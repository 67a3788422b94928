"""Cleanup under fire: N Docker sandbox runs, each in its own runner process, every Kth runner
killed with SIGKILL while its container runs; then count what is left (prints numbers).

  containers : containers still labelled with this trial's project id (watchdogs and per-project
               reaping must leave 0)
  cgroups    : per-run cgroup folders (v1 and v2) named after one of this trial's runner pids (0)

    .venv/bin/python bench/bench_containment.py [--runs 50] [--kill-every 10]

tests/sandbox/test_sandbox_cleanup.py runs a short version of it.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNNER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from autoresearch.sandbox import DockerBackend, SandboxSpec
b = DockerBackend(None)
rt = b.runtime()
code = "import time; print('started', flush=True); time.sleep(float(%r))" % sys.argv[3]
r = b.run(SandboxSpec(argv=[rt.python, "-c", code], mounts=rt.mounts, env={**rt.env, "HOME": "/tmp"},
                      cwd="/tmp", timeout_s=60, memory_bytes=256 << 20, owner=sys.argv[2],
                      log_path=None, capture_stdout=True))
print("exit", r.exit_code, flush=True)
"""


def our_cgroups(pids: set[int]) -> list[str]:
    """Cgroup folders of docker's per-run parents (autoresearch/run-PID-*) and bwrap-style
    per-run cgroups (autoresearch-PID-*) for these runner pids, in every hierarchy."""
    found = []
    for base in Path("/sys/fs/cgroup").glob("*"):
        for d in list(base.glob("autoresearch/run-*")) + list(base.glob("**/autoresearch-*-*")):
            parts = d.name.replace("run-", "").replace("autoresearch-", "").split("-")
            if parts and parts[0].isdigit() and int(parts[0]) in pids and d.is_dir():
                found.append(str(d))
    return found


def our_containers(owner: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=org.autoresearch.sandbox.project={owner}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def trial(runs: int, kill_every: int, parallel: int = 2, sleep_s: float = 1.5) -> dict:
    """Run the trial; returns counts (and the time it took)."""
    owner = "bench-" + uuid.uuid4().hex[:10]
    pids: set[int] = set()
    killed = 0
    t0 = time.monotonic()
    pending = list(range(1, runs + 1))
    live: list[tuple[int, subprocess.Popen]] = []
    while pending or live:
        while pending and len(live) < parallel:
            i = pending.pop(0)
            p = subprocess.Popen([sys.executable, "-c", RUNNER, str(ROOT), owner, str(sleep_s)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            pids.add(p.pid)
            live.append((i, p))
        i, p = live.pop(0)
        if kill_every and i % kill_every == 0:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not our_containers(owner):
                time.sleep(0.05)                    # its container exists: kill the runner mid-run
            time.sleep(0.3)
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait(timeout=120)
        if p.stdout:
            p.stdout.close()
    settle = time.monotonic() + 15                  # watchdogs act on the runner's death at once
    while time.monotonic() < settle and (our_containers(owner) or our_cgroups(pids)):
        time.sleep(0.2)
    return {"runs": runs, "killed": killed, "containers_left": len(our_containers(owner)),
            "cgroup_dirs_left": len(our_cgroups(pids)), "seconds": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--kill-every", type=int, default=10)
    args = ap.parse_args()
    r = trial(args.runs, args.kill_every)
    print(json.dumps(r))
    return 0 if r["containers_left"] == 0 and r["cgroup_dirs_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
