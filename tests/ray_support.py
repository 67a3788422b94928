"""A real two-node Ray cluster on this machine, for the Ray executor's tests.

`ray start --head --num-cpus 2 --resources '{"slot": 2}'` plus a second `ray start --address ...`
with its own logical resources, each with its own temp dir, ports and TMPDIR (so a test can see
which runs a node holds, and kill that node alone). Teardown kills exactly the processes this
cluster started (its temp dirs are in their command lines), never other Ray clusters on the box.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    temp: Path                     # --temp-dir: in the command line of every process of the node
    tmpdir: Path                   # the node's TMPDIR: raynode unpacks its runs here
    port: int = 0                  # --node-manager-port: tells the node apart in ray.nodes()
    node_id: str = ""


@dataclass
class Cluster:
    address: str
    head: Node
    worker: Node
    base: Path
    env: dict[str, str] = field(default_factory=dict)

    def pids(self, node: Node) -> list[int]:
        """The node's processes and their descendants (workers are the raylet's children), from /proc."""
        procs: dict[int, tuple[int, str]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                procs[int(d.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
        out = {pid for pid, (_, cmd) in procs.items() if str(node.temp) in cmd}
        grew = True
        while grew:
            more = {pid for pid, (ppid, _) in procs.items() if ppid in out} - out
            out |= more
            grew = bool(more)
        return sorted(out)

    def kill(self, node: Node) -> None:
        for pid in self.pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def runs_on(self, node: Node) -> list[str]:
        """Run ids the node is running now (raynode's unpacked projects under its TMPDIR)."""
        return sorted(p.name for p in node.tmpdir.glob("autoresearch-ray-*/project/runs/*") if (p / "train.log").exists())

    def stop(self) -> None:
        self.kill(self.worker)
        self.kill(self.head)
        shutil.rmtree(self.base, ignore_errors=True)


def _start(args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([str(RAY), "start", *args, "--disable-usage-stats"], env=env, capture_output=True,
                       text=True, timeout=180)
    if r.returncode != 0:
        raise RuntimeError(f"ray start failed: {r.stdout[-1500:]}\n{r.stderr[-1500:]}")


def start_cluster() -> Cluster:
    base = Path(tempfile.mkdtemp(prefix="arr-"))       # short: Ray's socket paths must fit 107 bytes
    head, worker = (Node(base / n / "ray", base / n / "tmp", free_port()) for n in ("h", "w"))
    for n in (head, worker):
        n.temp.mkdir(parents=True)
        n.tmpdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="3",
               RAY_health_check_initial_delay_ms="1000")
    port = free_port()
    lo = 20000 + (os.getpid() % 200) * 100
    common = ["--object-store-memory", str(80 * 2**20)]
    cluster = Cluster(f"127.0.0.1:{port}", head, worker, base, env)
    try:
        _start(["--head", "--port", str(port), "--num-cpus", "2", "--resources", '{"slot": 2}',
                "--temp-dir", str(head.temp), "--node-manager-port", str(head.port), "--include-dashboard", "false", "--min-worker-port", str(lo), "--max-worker-port", str(lo + 40),
                *common], {**env, "TMPDIR": str(head.tmpdir)})
        _start(["--address", cluster.address, "--num-cpus", "1", "--resources", '{"slot": 2}',
                "--temp-dir", str(worker.temp), "--node-manager-port", str(worker.port),
                "--object-manager-port", str(free_port()), "--min-worker-port", str(lo + 50),
                "--max-worker-port", str(lo + 90), *common], {**env, "TMPDIR": str(worker.tmpdir)})
        _node_ids(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_ids(c: Cluster) -> None:
    """Which node id is the head's and which the worker's (by node manager port, from ray.nodes())."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps({n['NodeManagerPort']: n['NodeID'] for n in ray.nodes() if n['Alive']}))") % c.address
    r = subprocess.run([sys.executable, "-c", code], env=c.env, capture_output=True, text=True, timeout=120)
    ids = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()} if r.returncode == 0 else {}
    c.head.node_id, c.worker.node_id = ids.get(c.head.port, ""), ids.get(c.worker.port, "")
    if not (c.head.node_id and c.worker.node_id):
        raise RuntimeError(f"the cluster's nodes are not both up: {ids} {r.stderr[-800:]}")
