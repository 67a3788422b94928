"""The local executor: a trusted host process that runs a wave's queued runs, up to `slots` at once.

`./run.sh --queue` and `./run.sh --wait` start it (`python -m autoresearch.run --serve`, detached in
its own session, so it outlives the agent's tool call and the session); the agent never runs it.
One per project (.autoresearch/scheduler.lock, an flock). It holds .autoresearch/run.lock SHARED
while it works, so a plain `./run.sh -m` (which takes it exclusively) waits for the wave to end, and
the wave waits for a plain run: never more runs at once than slots.

Each run is a child `python -m autoresearch.run --execute NNNN --slot K`: the same two-stage runner,
in its own process group, holding .autoresearch/slot-K.lock and runs/NNNN/.running; slot K is pinned
to the K-th GPU the sandbox may use (sandbox.gpus narrowed to it: CUDA_VISIBLE_DEVICES and the device
nodes), or with no GPU to every slots-th CPU core (sched_setaffinity; the fingerprint's device says
how many cores). Each child writes only its own runs/NNNN/; nobody here writes the ledger (the Stop
hook does, under the loop lock). A child that dies before recording an end leaves its run
interrupted (its metrics.json says so from the start), never a result.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

from .. import registry
from ..record import RUN_LOCK, STATE_DIR
from ..record import load_verified
from ..record import claim, entries, finish, read_entry, settle_lost, slot_free, slot_lock

SCHEDULER_LOCK = "scheduler.lock"
POLL_S = 0.5


def _flock(path: Path, how: int) -> int | None:
    """An open fd holding flock `how` on path, or None when it is held elsewhere (how has LOCK_NB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, how)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def scheduler_alive(root: Path) -> bool:
    fd = _flock(Path(root) / STATE_DIR / SCHEDULER_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        return True
    os.close(fd)
    return False


def slots_for(program) -> int:
    """executor.slots, else one per executor.gpus_per_run GPUs the sandbox may use, else 1."""
    if program.executor.slots:
        return program.executor.slots
    if registry.remote(program.executor.kind):
        return registry.executor_module(program.executor.kind).cluster_slots(program)
    from ..sandbox import SandboxUnavailable, selected_gpus
    from .specs import gpu_request
    try:
        return max(1, len(selected_gpus(gpu_request(program))) // program.executor.gpus_per_run)
    except SandboxUnavailable:
        return 1


def gpu_group(indices: list[int], slot: int, per_run: int) -> list[int]:
    """Slot K's GPUs: the K-th group of `per_run` (wrapping); all of them when there are fewer."""
    if per_run >= len(indices):
        return list(indices)
    groups = len(indices) // per_run
    k = slot % groups
    return list(indices[k * per_run:(k + 1) * per_run])


def ensure_scheduler(root: Path) -> None:
    """Start the scheduler for root unless one runs (a second one started in a race exits at once)."""
    if scheduler_alive(root):
        return
    log = open(Path(root) / STATE_DIR / "scheduler.log", "ab")
    subprocess.Popen([sys.executable, "-m", "autoresearch.run", "--serve"], cwd=root, stdin=subprocess.DEVNULL,
                     stdout=log, stderr=log, start_new_session=True, close_fds=True)
    log.close()


@contextlib.contextmanager
def _held(path: Path, how: int) -> Iterator[int | None]:
    fd = _flock(path, how)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def serve(root: Path) -> int:
    """Run the queue until nothing is queued or running. One scheduler per project."""
    from ..program import load_program
    root = Path(root).resolve()
    with _held(root / STATE_DIR / SCHEDULER_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB) as me:
        if me is None:
            return 0                                   # another scheduler serves this project
        os.ftruncate(me, 0)
        os.pwrite(me, f"{os.getpid()}\n".encode(), 0)
        program = load_program(root)
        slots = slots_for(program)
        with _held(root / STATE_DIR / RUN_LOCK, fcntl.LOCK_SH):    # waits for a plain ./run.sh to end
            _loop(root, slots)
    return 0


def _watch(p: subprocess.Popen, ended: threading.Event) -> None:
    """Wake the loop the moment a runner exits (its slot is refilled at once, not at the next poll)."""
    threading.Thread(target=lambda: (p.wait(), ended.set()), daemon=True).start()


def _loop(root: Path, slots: int) -> None:
    procs: dict[int, tuple[subprocess.Popen, str]] = {}
    ended = threading.Event()
    while True:
        ended.clear()
        for k, (p, rid) in list(procs.items()):
            if p.poll() is not None:
                del procs[k]
                finish(root, rid, "interrupted", f"its runner exited ({p.returncode}) before recording an end")
        mine = {rid for _, rid in procs.values()}
        settle_lost(root, mine)                        # a runner lost with an earlier scheduler (or the machine)
        es = entries(root)
        queued = [e for e in es if e.state == "queued"]
        others_running = [e for e in es if e.state == "running" and e.run_id not in mine]
        free = [k for k in range(slots) if k not in procs and slot_free(root, k)]
        for k, e in zip(free, queued):
            if claim(root, e.run_id, k) is None:
                continue
            p = subprocess.Popen([sys.executable, "-m", "autoresearch.run", "--execute", e.run_id, "--slot", str(k),
                                  "--slots", str(slots)], cwd=root, stdin=subprocess.DEVNULL,
                                 start_new_session=True, close_fds=True)
            procs[k] = (p, e.run_id)
            _watch(p, ended)
            finish(root, e.run_id, "running", pid=p.pid)
        if not procs and not queued and not others_running:
            return
        ended.wait(POLL_S)


def pin_slot(program, slot: int, slots: int):
    """The program for slot K: sandbox.gpus narrowed to its executor.gpus_per_run GPUs; with no
    GPU, this process (and so the sandbox) pinned to every slots-th CPU core."""
    from ..sandbox import selected_gpus
    from .specs import gpu_request
    gpus = selected_gpus(gpu_request(program))
    if gpus:
        mine = gpu_group([g.index for g in gpus], slot, program.executor.gpus_per_run)
        return program.model_copy(update={"sandbox": program.sandbox.model_copy(update={"gpus": mine})})
    if slots > 1 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        share = cpus[slot % slots::slots] or cpus
        os.sched_setaffinity(0, share)
    return program


def execute_child(root: Path, run_id: str, slot: int, slots: int, here: bool = False) -> int:
    """The scheduler's child for one run on one slot: the same two-stage runner, here or (executor
    kind ray, unless `here`: this is the node) as a Ray task whose results come back here."""
    from ..program import load_program
    from ..record import HarnessError, RunExit
    from .enqueue import execute_queued
    from ..record import pending_record
    root = Path(root).resolve()
    with _held(slot_lock(root, slot), fcntl.LOCK_EX), _held(root / STATE_DIR / RUN_LOCK, fcntl.LOCK_SH):
        finish(root, run_id, "running", pid=os.getpid())   # its own session: pause can stop it even when
        try:                                               # the scheduler died before noting the pid
            program = load_program(root)
            if registry.remote(program.executor.kind) and not here:
                from .runner import signals_as_interrupt
                ex = registry.executor_module(program.executor.kind)
                ex.connect(program)                        # first: ray.init installs its own SIGTERM handler
                with signals_as_interrupt([]):             # pause's SIGTERM: cancel the task, then record
                    ex.execute_child(root, run_id, program)
                return RunExit.OK
            execute_queued(root, run_id, slot, pin_slot(program, slot, slots))
        except KeyboardInterrupt:
            finish(root, run_id, "interrupted", "interrupted by a signal; the sandbox was stopped")
            return RunExit.INTERRUPTED
        except Exception as e:                        # harness error: the run never measured anything
            e_ = read_entry(root / "runs" / run_id)
            m, _ = load_verified(root / "runs" / run_id)
            if e_ is not None and (m is None or m.queued):    # never started
                with contextlib.suppress(Exception):
                    from ..digest import sha256_file
                    sha = sha256_file(root / "runs" / run_id / Path(load_program(root).run.train_script).name)
                    pending_record(root, e_, sha or "-", load_program(root), f"harness error: {e}",
                                   finished=e_.started_at)
            finish(root, run_id, "interrupted", f"harness error: {type(e).__name__}: {e}")
            return RunExit.NOT_STARTED if isinstance(e, HarnessError) else RunExit.HARNESS
        finish(root, run_id, "done")
    return RunExit.OK
