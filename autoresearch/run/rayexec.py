"""The Ray executor (`executor: {kind: ray, address: ..., resources: ...}`): each queued run is one
Ray task on an existing cluster; the node that gets it runs the SAME two-stage sandboxed runner
(raynode.py), and its results come back into runs/NNNN/ here, on the head.

One Ray driver per scheduler (`Driver`): the scheduler connects once and submits every run of the
wave from a thread of its own (a driver per run cost seconds a run: ray.init, a new job, new
workers); the slot only bounds how many tasks are in flight. Nothing relies on a shared
filesystem: the task carries its package, in two parts: the base (the committed tree at the run's
base and the autoresearch package, put into the cluster's object store once per base commit) and
the run's overlay (program.md, the queued snapshot and entry); each node prepares the data through
prepare.py's pinned, hash-checked cache.

Signing: the project's key never leaves the head. The node's runner signs with a key made for that
task (outside the sandbox's mounts; agent code never sees it) and returns it with the record; here
the signature is checked with it, the record re-checked (it is this run: run id, snapshot, script,
seed, budget, message; host_check's sanity checks) and re-signed with the project's key. The node
is trusted as far as its harness goes (it runs our code, under `ray start` by whoever owns the
cluster); agent code on it runs only in the node's sandbox.

A lost node, a crashed worker, a cancelled task, a lost object, a harness failure on the node:
the run is recorded `interrupted`, never a result. Ray is imported only here (an optional extra).
"""
from __future__ import annotations

import hmac
import io
import json
import os
import subprocess
import tarfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..digest import sha256_bytes
from ..record import HarnessError
from ..record import snapshot_of
from .inputs import write_diff
from ..record import EVAL_LOG, RUNS_DIR, eval_log, new_log
from ..record import RunMetrics, mac as _mac, host_check
from ..record import QUEUE_FILE, SNAPSHOT_DIR, QueueEntry, finish, read_entry, saved_files, set_node

def wanted(program) -> dict[str, float]:
    """What each task asks of the cluster: executor.resources, else executor.gpus_per_run GPUs."""
    return dict(program.executor.resources or {"GPU": float(program.executor.gpus_per_run)})


HINT = "pip install -e '.[ray]' (the Ray executor is an optional extra)"


def _ray():
    try:
        import ray
    except ImportError:
        raise HarnessError(f"executor kind: ray needs Ray on this machine: {HINT}") from None
    return ray


PROBE_S = 10                 # how long the cluster's address may take to accept a connection


def unreachable(address: str | None) -> str | None:
    """Why executor.address (host:port, or ray://host:port) cannot be reached (it accepts no TCP
    connection: ray.init would retry such a cluster for ever, and the wave would hang), or None."""
    import socket
    addr = (address or "auto").removeprefix("ray://")
    if addr == "auto" or ":" not in addr:
        return None                              # ray.init finds (or refuses) a local cluster at once
    host, _, port = addr.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S).close()
    except (OSError, ValueError) as e:
        return f"the Ray cluster at {address} cannot be reached ({type(e).__name__}: {e})"
    return None


UNREACHABLE_FIX = "start it (ray start --head) or fix executor.address in program.md"


def connect(program) -> object:
    """ray.init to executor.address (a running cluster; never starts a local one)."""
    ray = _ray()
    if not ray.is_initialized():
        if why := unreachable(program.executor.address):
            raise HarnessError(f"{why}: {UNREACHABLE_FIX}")
        ray.init(address=program.executor.address or "auto", namespace="autoresearch", log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
    return ray


def cluster_slots(program) -> int:
    """How many of this program's tasks the cluster can run at once (executor.slots when set)."""
    if program.executor.slots:
        return program.executor.slots
    ray = connect(program)
    want = wanted(program)
    total = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            total += int(min(have.get(k, 0) // v for k, v in want.items() if v > 0) if want else 1)
    return max(1, total)


# ---------------------------------------------------------------- the package

def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def base_package(root: Path, base: str) -> bytes:
    """tar.gz: project/ (the run's base commit, its blobs byte for byte: the node commits them, so
    the work copies and the frozen eval.files come from a commit there as here) and
    harness/autoresearch/ (this package's source, as this driver runs it)."""
    import autoresearch

    from ..gitops import GitError, tree_blobs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        try:                                       # the committed bytes exactly (git archive would apply
            for rel, mode, data in tree_blobs(root, base, {RUNS_DIR, ".autoresearch"}):  # export-ignore/-subst)
                info = tarfile.TarInfo(f"project/{rel}")
                if mode == b"120000":
                    info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(data)
                    tar.addfile(info)
                else:
                    _add_bytes(tar, f"project/{rel}", data, 0o755 if mode == b"100755" else 0o644)
        except (subprocess.CalledProcessError, GitError, OSError) as err:
            raise HarnessError(f"cannot package the project at {base} for Ray ({type(err).__name__}): commit the "
                               "project first (git add -A && git commit)") from None
        pkg = Path(autoresearch.__file__).parent
        tar.add(pkg, arcname="harness/autoresearch",
                filter=lambda t: None if "__pycache__" in t.name or t.name.endswith(".pyc") else t)
    return buf.getvalue()


def overlay_package(root: Path, e: QueueEntry) -> bytes:
    """tar.gz: overlay/, what goes on top of the node's commit: program.md as here and runs/NNNN/
    with the snapshot and queue entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if (root / "program.md").is_file():
            _add_bytes(tar, "overlay/program.md", (root / "program.md").read_bytes())
        run = root / RUNS_DIR / e.run_id
        for f in [run / QUEUE_FILE, *sorted((run / SNAPSHOT_DIR).rglob("*"))]:
            if f.is_file() and not f.is_symlink():
                tar.add(f, arcname=f"overlay/{RUNS_DIR}/{e.run_id}/{f.relative_to(run)}")
    return buf.getvalue()


def _task_env() -> dict[str, str]:
    """The head's AUTORESEARCH_* settings that mean the same on a node (not paths of this machine)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith("AUTORESEARCH_") and k not in ("AUTORESEARCH_DATA", "AUTORESEARCH_CACHE")}


# ---------------------------------------------------------------- the driver

class Driver:
    """One Ray driver per scheduler: connected once, here, it submits every run of the wave (each
    from its own thread of the scheduler), and ships each base commit's tree and the harness once
    (an object in the cluster's store) with a small overlay per run."""

    def __init__(self, program) -> None:
        from . import raynode
        self.ray = connect(program)
        self.ray.cloudpickle.register_pickle_by_value(raynode)   # the node needs no autoresearch installed
        self.task = self.ray.remote(raynode.run_package)
        self._bases: dict[tuple[Path, str], object] = {}
        self._lock = threading.Lock()

    def _base(self, root: Path, base: str | None) -> object:
        """The base package's object (made once per project and commit; HEAD, which moves, every time)."""
        if base is None:
            return self.ray.put(base_package(root, "HEAD"))
        with self._lock:
            if (root, base) not in self._bases:
                self._bases[(root, base)] = self.ray.put(base_package(root, base))
            return self._bases[(root, base)]

    def _submit(self, root: Path, e: QueueEntry, program) -> object:
        res = dict(wanted(program))
        opts = {"num_cpus": res.pop("CPU", 0), "num_gpus": res.pop("GPU", 0), "resources": res,
                "max_retries": 0, "scheduling_strategy": "SPREAD", "num_returns": "streaming"}
        return self.task.options(**opts).remote(self._base(root, e.base), overlay_package(root, e), e.run_id,
                                                _task_env(), int(program.sandbox.disk_gb * 2**30))

    def run(self, root: Path, run_id: str, program, stop: threading.Event) -> RunMetrics:
        """Submit the queued run as a Ray task, wait, record its result here (or `interrupted`).
        `stop` set (pause's SIGTERM to the scheduler): the task is cancelled and has ended (its
        runner and sandbox stopped, its folder removed) before KeyboardInterrupt is raised here."""
        ray, root = self.ray, Path(root).resolve()
        e = read_entry(root / RUNS_DIR / run_id)
        if e is None:
            raise HarnessError(f"run {run_id} is not a queued run")
        gen = self._submit(root, e, program)
        nxt, node, dispatch = _Next(ray, gen), None, None
        try:
            if not nxt.wait(start_s(), stop):          # infeasible, or the autoscaler gave no node
                _cancel(ray, gen, nxt.came)
                return lost(root, e, program, f"no node of the Ray cluster took it within {start_s():g} s: it asks "
                            f"for {wanted(program)}, the cluster's nodes have "
                            f"{_have(ray, program)} (executor.resources; AUTORESEARCH_RAY_START_S sets the wait)")
            node = str(nxt.value()["node"])            # the task started: status shows where it runs
            dispatch = (datetime.now(timezone.utc) - e.started_at).total_seconds() if e.started_at else None
            set_node(root, run_id, node)
            nxt = _Next(ray, gen)
            nxt.wait(None, stop)
            out = nxt.value()
        except KeyboardInterrupt:                      # pause: the task stops its runner, then ends
            _cancel(ray, gen, nxt.came)
            raise
        except (ray.exceptions.RayError, StopIteration) as err:   # node died, worker crashed, cancelled, lost
            return lost(root, e, program, f"lost on the Ray cluster: {type(err).__name__}: {_first_line(err)}", node)
        return receive(root, e, program, out, dispatch)

    def execute(self, root: Path, run_id: str, program, stop: threading.Event) -> None:
        """The scheduler's thread for a Ray slot: run it on the cluster; the queue entry says how it ended."""
        m = self.run(root, run_id, program, stop)
        if m.status == "interrupted":
            finish(root, run_id, "interrupted", m.reason)
        else:
            finish(root, run_id, "done")


CANCEL_S = 60                # a cancelled task has this long to stop its runner and clean up


def start_s() -> float:
    """How long a queued run may wait for a node (an autoscaler may take minutes to add one)."""
    return float(os.environ.get("AUTORESEARCH_RAY_START_S", "") or 900)


POLL_S = 0.1                 # how often a waiting run looks at its scheduler's stop


class _Next:
    """The generator's next item, read by a thread of its own (a blocking get is the only way to
    it), so the wait can be bounded and given up when the scheduler stops. `came` is set when the
    item came, or the task ended."""

    def __init__(self, ray, gen) -> None:
        self.box: dict = {}
        self.came = threading.Event()

        def get() -> None:
            try:
                self.box["v"] = ray.get(next(gen))
            except BaseException as err:               # noqa: BLE001 -- handed to the caller
                self.box["e"] = err
            self.came.set()

        threading.Thread(target=get, daemon=True).start()

    def wait(self, timeout: float | None, stop: threading.Event) -> bool:
        """Did it come within timeout (None: however long it takes)? KeyboardInterrupt when `stop` is set first."""
        t0 = time.monotonic()
        while not self.came.wait(POLL_S):
            if stop.is_set():
                raise KeyboardInterrupt("the scheduler was stopped")
            if timeout is not None and time.monotonic() - t0 > timeout:
                return False
        return True

    def value(self) -> dict:
        """The item (a task error is raised here)."""
        if "e" in self.box:
            raise self.box["e"]
        return self.box["v"]


def _have(ray, program) -> dict[str, float]:
    """The alive nodes' total of each resource the run asks for."""
    want = wanted(program)
    total: dict[str, float] = dict.fromkeys(want, 0.0)
    for node in ray.nodes():
        if node.get("Alive"):
            for k in want:
                total[k] += float(node.get("Resources", {}).get(k, 0))
    return total


def _cancel(ray, gen, pending: threading.Event) -> None:
    """Cancel the task gently (KeyboardInterrupt in it: raynode stops the runner, which stops its
    sandbox, and removes its folder) and wait for it to end: this driver leaving first would kill
    the worker mid-cleanup. Forced (the worker killed) when it has not ended in time. `pending`:
    set when the item a reader waits for comes, which is when the task has ended."""
    ray.cancel(gen)
    if not pending.wait(CANCEL_S):
        ray.cancel(gen, force=True)


def _first_line(err: BaseException) -> str:
    lines = [x for x in str(err).splitlines() if x.strip()]
    return (lines[-1] if lines else "")[:300]


def lost(root: Path, e: QueueEntry, program, reason: str, node: str | None = None) -> RunMetrics:
    """The signed record of a run that never came back: interrupted, never a result."""
    files = saved_files(root, e)
    code = files.get(program.run.train_script) or b""
    m = RunMetrics(run_id=e.run_id, status="interrupted", metric_name=program.metric.name,
                   direction=program.metric.direction, train_py_sha256=sha256_bytes(code), seed=e.seed,
                   budget_seconds=e.budget_seconds, grace_seconds=program.budget.grace_seconds,
                   sandbox=e.backend or program.sandbox.backend, description=e.message, reason=reason,
                   started_at=e.started_at or e.queued_at, finished_at=datetime.now(timezone.utc),
                   snapshot_sha256=snapshot_of(files), extra={"executor": "ray", "node": node})
    m.write(root / RUNS_DIR / e.run_id)
    return m


def _extract(run_dir: Path, blob: bytes) -> None:
    """The node's result files into runs/NNNN/ (regular files under the run folder only); its eval
    log into this project's state folder, outside the project (the human's only)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and (m.name in ("train.log", "train.py") or m.name.startswith("out/")):
                tar.extract(m, run_dir, filter="data")
            elif m.isfile() and m.name == EVAL_LOG and (f := tar.extractfile(m)) is not None:
                new_log(eval_log(run_dir.parent.parent, run_dir.name), "").write_bytes(f.read())


def receive(root: Path, e: QueueEntry, program, out: dict, dispatch: float | None = None) -> RunMetrics:
    """Check the node's record (its task key's signature, then that it is this run), re-sign it here
    (with `dispatch`: the seconds from the run's claim to its task starting on the node)."""
    run_dir = root / RUNS_DIR / e.run_id
    node = str(out.get("node") or "?")
    set_node(root, e.run_id, node)
    _extract(run_dir, out.get("files") or b"")
    raw, key = out.get("metrics"), out.get("key")
    if raw is None or key is None:
        return lost(root, e, program, f"the node recorded no result (runner exit {out.get('rc')}): "
                    f"{(out.get('runner_log') or '').strip()[-300:]}", node)
    body = json.loads(raw)
    sig = body.pop("signature", None)
    if not isinstance(sig, str) or not hmac.compare_digest(_mac(bytes.fromhex(key.decode().strip()), body), sig):
        return lost(root, e, program, "the node's record does not match its signature", node)
    m = RunMetrics.model_validate(body)
    files = saved_files(root, e)
    mine = (m.run_id, m.snapshot_sha256, m.train_py_sha256, m.seed, m.budget_seconds, m.description)
    want = (e.run_id, snapshot_of(files), sha256_bytes(files.get(program.run.train_script) or b""), e.seed,
            e.budget_seconds, e.message)
    if mine != want:
        return lost(root, e, program, "the node's record is not this run's (snapshot, seed or budget differ)", node)
    if (bad := host_check(m)) is not None:
        m.status, m.reason, m.metric_value = bad[0], bad[1], None  # type: ignore[assignment]
    m.extra.update(executor="ray", node=node)
    if dispatch is not None:
        m.extra["dispatch_s"] = round(dispatch, 3)
    if out.get("job"):
        m.extra["ray_job"] = str(out["job"])[:64]      # the driver that submitted it: one per scheduler
    m.extra.pop("diff", None)                 # the node has no history: the diff is made here
    if note := write_diff(root, run_dir, files):
        m.extra["diff"] = note
    if e.base:
        m.extra["head"] = e.base
        if "eval_base" in m.extra:             # the node's commit of e.base: its eval.files are e.base's
            m.extra["eval_base"] = e.base
    if out.get("out_left"):
        m.extra["out_left_on_node"] = ", ".join(out["out_left"])[:300]
    m.write(run_dir)                          # signed with the project's key, here
    return m
