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

A remote executor (Ray) runs no child per run: the scheduler is the cluster's one driver (connected
once; a driver per run cost seconds of dispatch a run) and each run is a thread of it, holding the
slot's lock and submitting the run as a task. Its queue entry notes the scheduler's pid: pause's
SIGTERM stops the scheduler, which cancels every task in flight, waits for each to end, and records
them interrupted.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

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
        stop, wake = threading.Event(), threading.Event()
        if registry.remote(program.executor.kind):
            start, slots = _in_threads(root, program, stop)   # first: ray.init installs its own SIGTERM handler
            stopping = _stop_on_signals(stop, wake)
        else:
            start, slots, stopping = _child_runner(root), slots_for(program), contextlib.nullcontext()
        with _held(root / STATE_DIR / RUN_LOCK, fcntl.LOCK_SH), stopping:    # waits for a plain ./run.sh to end
            _loop(root, slots, start, wake, stop)
    return 0


Start = Callable[[str, int, int], "subprocess.Popen | _InThread"]     # (run id, slot, slots) -> its runner


def _child_runner(root: Path) -> Start:
    """The local executor's runner for a slot: a child process in its own session."""
    def start(run_id: str, slot: int, slots: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "autoresearch.run", "--execute", run_id, "--slot", str(slot),
                                 "--slots", str(slots)], cwd=root, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    return start


class _InThread:
    """A remote executor's run in a thread of this scheduler, polled and waited for like a child.
    `pid`: the scheduler's, when it leads its own process group (pause signals that group)."""

    def __init__(self, work: Callable[[], int], pid: int | None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._t = threading.Thread(target=self._main, args=(work,), daemon=True)
        self._t.start()

    def _main(self, work: Callable[[], int]) -> None:
        rc = -1
        try:
            rc = work()
        finally:
            self.returncode = rc

    def poll(self) -> int | None:
        return None if self._t.is_alive() else self.returncode

    def wait(self) -> int | None:
        self._t.join()
        return self.returncode


def _in_threads(root: Path, program, stop: threading.Event) -> tuple[Start, int]:
    """The remote executor's runner for a slot: a thread that submits the run through this
    scheduler's one driver. A driver that cannot connect fails each run with its reason (and fix)."""
    ex = registry.executor_module(program.executor.kind)
    failed: Exception | None = None
    leader = os.getpid() if os.getpgrp() == os.getpid() else None     # ensure_scheduler: its own session
    try:
        driver = ex.Driver(program)
        slots = slots_for(program)
    except Exception as err:                           # noqa: BLE001 -- each run records it
        driver, failed, slots = None, err, program.executor.slots or 1

    def start(run_id: str, slot: int, _slots: int) -> _InThread:
        def work(prog) -> None:
            if driver is None:
                raise failed                          # type: ignore[misc]
            driver.execute(root, run_id, prog, stop)
        return _InThread(lambda: _guarded(root, run_id, slot, work, leader), leader)
    return start, slots


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, wake: threading.Event) -> Iterator[None]:
    """SIGTERM, SIGHUP, SIGINT set `stop` (and wake the loop): the runs in flight are cancelled by
    their threads, nothing new starts, and the scheduler ends when they have."""
    def handler(_signum, _frame) -> None:
        stop.set()
        wake.set()
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _watch(p, ended: threading.Event) -> None:
    """Wake the loop the moment a runner exits (its slot is refilled at once, not at the next poll)."""
    threading.Thread(target=lambda: (p.wait(), ended.set()), daemon=True).start()


def _loop(root: Path, slots: int, start: Start, ended: threading.Event, stop: threading.Event) -> None:
    procs: dict[int, tuple] = {}
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
        if stop.is_set():                              # stopped: the runs in flight end, nothing new starts
            queued, others_running = [], []
        free = [k for k in range(slots) if k not in procs and slot_free(root, k)]
        for k, e in zip(free, queued):
            if claim(root, e.run_id, k) is None:
                continue
            p = start(e.run_id, k, slots)
            procs[k] = (p, e.run_id)
            _watch(p, ended)
            if p.pid:
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


def execute_child(root: Path, run_id: str, slot: int, slots: int) -> int:
    """The scheduler's child for one run on one slot (a local slot, or a Ray node's runner): the
    same two-stage runner, in its own session (pause can stop it even when the scheduler died
    before noting the pid)."""
    from .enqueue import execute_queued
    root = Path(root).resolve()
    return _guarded(root, run_id, slot, lambda program: execute_queued(root, run_id, slot,
                                                                       pin_slot(program, slot, slots)), os.getpid())


def _guarded(root: Path, run_id: str, slot: int, work: Callable, pid: int | None) -> int:
    """Run `work(program)` for the claimed run on `slot`, holding the slot's lock: the queue entry
    says how it ended (interrupted by a signal, or a harness error that never measured anything,
    recorded interrupted)."""
    from ..program import load_program
    from ..record import HarnessError, RunExit
    from ..record import pending_record
    with _held(slot_lock(root, slot), fcntl.LOCK_EX), _held(root / STATE_DIR / RUN_LOCK, fcntl.LOCK_SH):
        if pid:
            finish(root, run_id, "running", pid=pid)
        try:
            work(load_program(root))
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
