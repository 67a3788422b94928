"""One experiment for the current train.py: `./run.sh -m "what changed and why"`.

    TRAIN  a fresh sandbox: the project read-only (runs/ hidden, train.py replaced by the
           hashed copy in runs/NNNN/), the train split only, runs/NNNN/out/ writable;
           killed from outside at budget + grace.
    EVAL   two processes. A fresh sandbox runs the model server (`python -m
           autoresearch.run.model_server`: agent code, the checkpoint read-only, no data
           mounted); the trusted scorer (autoresearch.run.scorer) runs here, holds the
           validation bytes, sends windows over the server's stdin, reads logits from its
           stdout, mixes in hidden checks and computes the loss itself. What agent code
           prints during EVAL goes to runs/NNNN/eval.log (for humans only: the guard
           denies the agent reading it); train.log gets only the evaluator's own lines.

Nothing the TRAIN stage writes or prints becomes the metric. Artifacts: runs/NNNN/
{metrics.json, train.log, eval.log, train.py, diff.patch, out/}. metrics.json is written first
with status `interrupted` and rewritten when the run ends, so a run killed at any
point is marked interrupted. Exit code: 0 when the experiment ran and was recorded
(whatever its status), 130 when interrupted, 2 for harness errors (bad arguments,
program.md, missing backend or data), with the fix in the message, 75 when another run of
this project is in progress (one run at a time: .autoresearch/run.lock), 74 when the disk is
full (one line says so; nothing is half-recorded as a result).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, TextIO

from ..digest import sha256_bytes
from ..program import ConfigError, Program, load_program, project_root
from .identity import Fingerprint, data_version, device_class, program_code, snapshot_files, snapshot_of
from .metrics import METRICS_FILE, RunMetrics, host_check
from ..sandbox import (NONE_WARNING, Backend, Mount, SandboxResult, SandboxSpec, SandboxUnavailable,
                       choose_backend, host_has_gpus)

RUNS_DIR = "runs"
SCRATCH_LOCK = ".lock"
LOG_FILE = "train.log"
EVAL_LOG = "eval.log"
CHECKPOINT = "model.pt"
TAIL_LINES = 15
INLINE_WARNING = ("inline mode: the metric was printed by the training code itself, "
                  "not measured by the trusted evaluator")


class HarnessError(RuntimeError):
    """The harness cannot run an experiment (arguments, program.md, backend, data); the message says the fix."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _gb(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


# ---------------------------------------------------------------- inputs

def resolve_budget(program: Program, budget: float | None) -> float:
    """--budget, else $AUTORESEARCH_TRAIN_SECONDS (one run), else program.md budget.train_seconds."""
    if budget is None and (env := os.environ.get("AUTORESEARCH_TRAIN_SECONDS")):
        try:
            budget = float(env)
        except ValueError:
            raise HarnessError(f"AUTORESEARCH_TRAIN_SECONDS={env!r} is not a number of seconds") from None
    if budget is None:
        budget = program.budget.train_seconds
    if not (math.isfinite(budget) and budget > 0):
        raise HarnessError(f"the training budget must be a positive number of seconds, not {budget}")
    return float(budget)


def run_dirs(root: Path) -> list[Path]:
    runs = root / RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted((p for p in runs.iterdir() if p.name.isdigit() and p.is_dir()), key=lambda p: int(p.name))


def earlier_runs_of(root: Path, sha: str) -> int:
    """How many runs in runs/ ran a train.py with this sha256 (unreadable metrics count as other code)."""
    n = 0
    for d in run_dirs(root):
        try:
            n += json.loads((d / METRICS_FILE).read_text()).get("train_py_sha256") == sha
        except (OSError, ValueError, AttributeError):
            pass
    return n


def derive_seed(root: Path, program: Program, sha: str, seed: int | None) -> int:
    """--seed, else program.seed + the number of earlier runs of this exact train.py, so a
    re-run of unchanged code (a confirmation run) gets a fresh seed automatically."""
    return seed if seed is not None else program.seed + earlier_runs_of(root, sha)


def _trailer_run_ids(root: Path) -> list[int]:
    """Run ids named by keep commits on any run branch (Autoresearch-Run / -Runs trailers)."""
    from ..gitops import git, trailers
    p = git(root, "log", "--format=%B%x00", "--branches=autoresearch/*", check=False)
    ids = []
    for msg in p.stdout.split("\x00"):
        t = trailers(msg)
        for rid in [t.get("Autoresearch-Run", "")] + t.get("Autoresearch-Runs", "").split(","):
            if rid.strip().isdigit():
                ids.append(int(rid))
    return ids


def _ledger_run_ids(root: Path) -> list[int]:
    from ..ledger import LedgerError, read_rows
    try:
        return [int(r) for row in read_rows(root) for r in row.runs + [row.run_id] if r.isdigit()]
    except (LedgerError, OSError):
        return []


def allocate_run_dir(root: Path) -> Path:
    """runs/NNNN with a number never used before in this project: above every folder in runs/,
    the counter in trusted state, every run id in the run branches' trailers and the ledger --
    so deleting runs/ cannot make a new run take a decided run's id. mkdir is the lock."""
    from ..loop.state import reserve_run_id
    runs = root / RUNS_DIR
    runs.mkdir(exist_ok=True)
    existing = run_dirs(root)
    floor = max([int(existing[-1].name) if existing else 0] + _trailer_run_ids(root) + _ledger_run_ids(root))
    n = reserve_run_id(root, floor)
    while True:
        d = runs / f"{n:04d}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            n = reserve_run_id(root, n)


class RunBusy(HarnessError):
    """Another run of this project is in progress (it holds .autoresearch/run.lock)."""


RUN_LOCK = "run.lock"
RUNNING = ".running"                      # runs/NNNN/.running: flock held while that run is live


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[int]:
    """One run at a time per project: an exclusive flock on .autoresearch/run.lock for the whole
    run (the kernel drops it when the runner dies, so a kill -9 leaves no stale lock). Two runs at
    once would each get a fraction of the machine and be measured wrongly."""
    d = root / ".autoresearch"
    d.mkdir(exist_ok=True)
    fd = os.open(d / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                holder = ""
            raise RunBusy(f"a run is in progress ({holder or 'another ./run.sh'}); wait for it to finish "
                          f"and print its result, then run again") from None
        yield fd
    finally:
        os.close(fd)


def _mark_holder(fd: int, run_id: str) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {run_id}, pid {os.getpid()}\n".encode(), 0)


def _hold_running(run_dir: Path) -> int | None:
    """runs/NNNN/.running, flock held until the runner exits: `runscan` reads a held lock as live."""
    try:
        fd = os.open(run_dir / RUNNING, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    except OSError:
        return None


STEP_LINE = re.compile(r"^step\s+(\d+)", re.M)


def steps_per_second(log: Path, train_seconds: float | None) -> float | None:
    """The last `step N` the log printed over the TRAIN stage's wall time. Only a contention check:
    a run reporting few steps is never kept, so a false number cannot win anything."""
    if not train_seconds:
        return None
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 262144))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    steps = [int(m.group(1)) for m in STEP_LINE.finditer(text)]
    return round(steps[-1] / train_seconds, 3) if steps else None


def write_diff(root: Path, run_dir: Path, script: str) -> str | None:
    """diff.patch of the train script against the branch head; returns a note when there is none."""
    from ..gitops import GitError, git
    try:
        proc = git(root, "diff", "--no-ext-diff", "--no-textconv", "HEAD", "--", script)
        (run_dir / "diff.patch").write_text(proc.stdout)
        return None
    except (GitError, OSError) as e:
        note = f"no diff against a branch head: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        (run_dir / "diff.patch").write_text(f"# {note}\n")
        return note


def _head(root: Path) -> str | None:
    from ..gitops import head_commit
    try:
        return head_commit(root)
    except OSError:
        return None


def load_prepare(root: Path):
    """The project's prepare.py (trusted, fixed): where the data lives."""
    path = root / "prepare.py"
    spec = importlib.util.spec_from_file_location("_autoresearch_project_prepare", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise HarnessError(f"{path} not found: the two-stage mode needs the project's prepare.py "
                           f"(or set run.mode: inline in program.md)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def data_folder(root: Path) -> Path:
    """The prepared dataset: $AUTORESEARCH_DATA, else prepare.py's default; train and val must exist."""
    env = os.environ.get("AUTORESEARCH_DATA")
    data = Path(env) if env else Path(load_prepare(root).data_dir())
    for split in ("train", "val"):
        if not (data / split / f"{split}.bin").is_file():
            raise HarnessError(f"{data / split / f'{split}.bin'} not found: prepare the data first "
                               f"(.venv/bin/python prepare.py, or scripts/bootstrap.sh)")
    return data.resolve()


# ---------------------------------------------------------------- GPU peak, measured from outside

class GpuPeak:
    """Peak GPU memory used during a stage, polled with nvidia-smi from the host (what the
    stage says about itself is not trusted). Inactive without GPUs or nvidia-smi."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_bytes = interval, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        sel = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        if sel:
            self._cmd += ["-i", sel]

    def _used(self) -> int | None:
        try:
            out = subprocess.run(self._cmd, capture_output=True, text=True, timeout=5).stdout
            return sum(int(x) for x in out.split() if x.isdigit()) * 2**20
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def __enter__(self) -> "GpuPeak":
        if host_has_gpus() and shutil.which("nvidia-smi"):
            base = self._used()
            if base is not None:
                def poll() -> None:
                    while not self._stop.wait(self.interval):
                        if (u := self._used()) is not None:
                            self.peak_bytes = max(self.peak_bytes or 0, u - base)
                self._thread = threading.Thread(target=poll, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)


# ---------------------------------------------------------------- signals

@contextlib.contextmanager
def signals_as_interrupt(seen: list[str]) -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C, so the sandbox cleans up and the
    run is marked interrupted; `seen` gets the signal's name."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        seen.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is not signal.default_int_handler:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- the two stages

@dataclass
class Layout:
    """Paths of one run, and the stand-in folders that hide parts of the project (kept in the
    run's own .sandbox/ folder, so even a kill -9 litters nothing outside runs/NNNN)."""
    root: Path
    run_dir: Path
    script: str                                   # relative to root, e.g. "train.py"

    @property
    def scratch(self) -> Path:
        return self.run_dir / ".sandbox"

    @property
    def out(self) -> Path:
        return self.run_dir / "out"

    @property
    def log(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def script_copy(self) -> Path:
        return self.run_dir / Path(self.script).name

    def skeleton(self) -> Path:
        """An empty stand-in for runs/ holding only this run's out/ mount point: a stage never
        sees earlier runs (their checkpoints would let training outlast its budget)."""
        skel = self.scratch / "runs"
        (skel / self.run_dir.name / "out").mkdir(parents=True, exist_ok=True)
        return skel

    def empty(self) -> Path:
        d = self.scratch / "empty"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def hold(self) -> None:
        """Mark .sandbox/ as in use (an flock held until this process ends), so a later run
        that finds it can tell a live run's folder from a killed one's."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.scratch / SCRATCH_LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        if (fd := getattr(self, "_lock_fd", None)) is not None:
            os.close(fd)
            self._lock_fd = None


def sweep_scratch(root: Path) -> list[str]:
    """Remove runs/*/.sandbox left by killed runners (nobody holds their lock); returns run ids."""
    gone = []
    for d in run_dirs(root):
        scratch = d / ".sandbox"
        if not scratch.is_dir() or scratch.is_symlink():
            continue
        try:
            fd = os.open(scratch / SCRATCH_LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = None                                  # killed before it took the lock
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue                           # a live run
            elif time.time() - scratch.stat().st_mtime < 60:
                continue                               # being set up right now
            shutil.rmtree(scratch, ignore_errors=True)
            gone.append(d.name)
        finally:
            if fd is not None:
                os.close(fd)
    return gone


def project_id(root: Path) -> str:
    """Short id of the project (its real path): docker labels, so orphans are reaped per project."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def clean_out(out: Path) -> list[str]:
    """After TRAIN: keep only regular files and folders in out/ (no links, FIFOs, sockets or
    devices, which host-side tools would follow or block on) and strip set-id bits. Returns
    what was removed, relative to out/."""
    removed: list[str] = []
    for d, dirs, files in os.walk(out, topdown=True, followlinks=False):
        for name in list(dirs) + files:
            p = Path(d) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                if st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
                    with contextlib.suppress(OSError):
                        os.chmod(p, stat.S_IMODE(st.st_mode) & 0o777, follow_symlinks=False)
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(str(p.relative_to(out)))
            if name in dirs:
                dirs.remove(name)
    return removed


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def project_mounts(lay: Layout, data: Path | None) -> list[Mount]:
    """The project read-only, with runs/ replaced by the skeleton, the train script by the
    run's hashed copy, and any val/test split folder inside the project hidden."""
    root = lay.root
    mounts = [Mount(root, str(root)),
              Mount(lay.skeleton(), str(root / RUNS_DIR)),
              Mount(lay.script_copy, str(root / lay.script))]
    if data is not None:
        for split in ("val", "test"):
            d = data / split
            if d.is_dir() and _inside(d, root):
                mounts.append(Mount(lay.empty(), str(d)))
    return mounts


def runtime_mounts(backend: Backend, root: Path) -> list[Mount]:
    """The backend's runtime mounts, less those inside the project: the project mount already
    shows them, and a target under a symlink there (a project's .venv linked to a shared one)
    cannot be mounted onto; the link's resolved target is itself a runtime mount."""
    return [m for m in backend.runtime().mounts if not _inside(Path(m.target), root)]


def package_mount() -> tuple[list[Mount], str]:
    """The autoresearch package (for the evaluator), and the PYTHONPATH entry that finds it."""
    pkg = Path(__file__).resolve().parents[1]
    return [Mount(pkg, str(pkg))], str(pkg.parent)


def base_env(backend: Backend, lay: Layout, home: str, budget: float, seed: int) -> dict[str, str]:
    env = dict(backend.runtime().env)
    env.update({
        "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(lay.root),
        "AUTORESEARCH_TRAIN_SECONDS": f"{budget:g}", "AUTORESEARCH_SEED": str(seed),
        "AUTORESEARCH_OUT": str(lay.out),
    })
    for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def train_spec(backend: Backend, program: Program, lay: Layout, data: Path | None, env: dict[str, str],
               budget: float, argv: list[str]) -> SandboxSpec:
    mounts = runtime_mounts(backend, lay.root) + project_mounts(lay, data)
    if data is not None:
        mounts.append(Mount(data / "train", str(data / "train")))
        env = {**env, "AUTORESEARCH_DATA": str(data)}
    mounts.append(Mount(lay.out, str(lay.out), writable=True))
    return SandboxSpec(argv=argv, mounts=mounts, env=env, cwd=str(lay.root),
                       timeout_s=budget + program.budget.grace_seconds,
                       memory_bytes=int(program.sandbox.memory_gb * 2**30), pids=program.sandbox.pids,
                       gpus=host_has_gpus(), log_path=lay.log, disk_bytes=int(program.sandbox.disk_gb * 2**30),
                       owner=project_id(lay.root))


def eval_spec(backend: Backend, program: Program, lay: Layout, data: Path | None, env: dict[str, str],
              session, log: Path) -> SandboxSpec:
    """The model server's sandbox: the project and checkpoint read-only, no data, the scorer's
    session on its stdin/stdout, its stderr (and anything agent code prints) to `log`."""
    pkg_mounts, pkg_path = package_mount()
    rt = backend.runtime()
    mounts = runtime_mounts(backend, lay.root) + project_mounts(lay, data) + [Mount(lay.out, str(lay.out))]
    mounts += [m for m in pkg_mounts if not _inside(m.source, lay.root)]
    env = {**env, "PYTHONPATH": f"{lay.root}:{pkg_path}", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    if "OMP_NUM_THREADS" not in env:                   # the servers run at once: share the cores, not fight
        from .scorer import SERVERS
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // SERVERS))
    argv = [rt.python, "-m", "autoresearch.run.model_server", "--project", str(lay.root), "--script", lay.script,
            "--checkpoint", str(lay.out / CHECKPOINT), "--vocab", str(int(load_prepare(lay.root).VOCAB_SIZE))]
    return SandboxSpec(argv=argv, mounts=mounts, env=env, cwd=str(lay.root),
                       timeout_s=program.budget.eval_seconds,
                       memory_bytes=int(program.sandbox.memory_gb * 2**30), pids=program.sandbox.pids,
                       gpus=host_has_gpus(), session=session, log_path=log,
                       owner=project_id(lay.root))


def run_eval(sandbox: Backend, program: Program, lay: Layout, data: Path | None, env: dict[str, str],
             split_file: Path, log: Path) -> tuple[SandboxResult, dict]:
    """The EVAL stage on `split_file`'s bytes: two model servers, each in its own sandbox, run at
    once and served by one trusted scorer. Returns (the servers' sandbox results merged: the
    longest wall time, the summed peak memory, the first failure; the scorer's result)."""
    import numpy as np

    from .scorer import SERVERS, Scorer
    m = program.metric
    scorer = Scorer(np.fromfile(split_file, dtype=np.uint8), load_prepare(lay.root), floor=m.floor,
                    direction=m.direction, metric=m.name)
    specs = [eval_spec(sandbox, program, lay, data, env, scorer.session(k), log) for k in range(SERVERS)]
    results: list[SandboxResult | None] = [None] * SERVERS
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            results[k] = sandbox.run(specs[k])
        except BaseException as e:                     # noqa: BLE001 -- re-raised in the caller's thread
            errors.append(e)
            scorer.aborted = True

    others = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(1, SERVERS)]
    for t in others:
        t.start()
    try:
        results[0] = sandbox.run(specs[0])
    except BaseException:
        scorer.aborted = True
        raise
    finally:
        for t in others:
            t.join()
    if errors:
        raise errors[0]
    done = [r for r in results if r is not None]
    failed = next((r for r in done if r.timed_out or r.oom or r.exit_code not in (0, None)), done[0])
    peaks = [r.peak_memory_bytes for r in done if r.peak_memory_bytes is not None]
    merged = dataclasses.replace(failed, wall_seconds=max(r.wall_seconds for r in done),
                                 timed_out=any(r.timed_out for r in done), oom=any(r.oom for r in done),
                                 peak_memory_bytes=sum(peaks) if peaks else None)
    return merged, scorer.finish()


def eval_status(res: SandboxResult, result: dict | None, program: Program) -> tuple[str, str | None]:
    """The EVAL stage's status and reason. The scorer's verdict wins, unless the server simply
    vanished (then the sandbox says why: timeout, oom, exit code). The EVAL log is never quoted:
    it may hold held-out bytes the model printed."""
    if result is not None and not result.get("hangup"):
        status, reason = str(result.get("status")), result.get("reason")
        if status == "ok" and not (isinstance(result.get("value"), (int, float)) and math.isfinite(result["value"])):
            return "invalid", f"the evaluator returned no finite value ({result.get('value')!r})"
        return status, reason
    if res.timed_out:
        return "timeout", f"the evaluation ran past eval_seconds {program.budget.eval_seconds:g} s"
    if res.oom:
        return "oom", f"the evaluation went over the memory limit ({program.sandbox.memory_gb:g} GB)"
    code = res.exit_code
    why = f"killed by signal {code - 128}" if code is not None and code > 128 else f"exited with code {code}"
    return "crash", (f"the model server {why} before the evaluation ended"
                     + (f" ({result['reason']})" if result and result.get("reason") else "")
                     + f"; its output is in {EVAL_LOG} (for humans only)")


def eval_line(status: str, reason: str | None, result: dict | None, metric: str) -> str:
    """The evaluator's own line for train.log (never anything agent code printed)."""
    if status != "ok":
        return f"evaluate: {status}: {reason}\n"
    r = result or {}
    return (f"evaluate: ok {metric} {r.get('value')} ({r.get('bytes')} bytes, {r.get('requests')} requests with "
            f"{r.get('check_windows')} hidden check windows, load {r.get('load_seconds')} s, "
            f"score {r.get('score_seconds')} s, device {r.get('device')})\n")


def log_tail(path: Path, n: int = TAIL_LINES, max_bytes: int = 65536) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [ln.rstrip() for ln in text.replace("\r", "\n").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines[-n:]


def _append_log(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _exception_line(lines: list[str]) -> str:
    """The line that ends the last traceback (stdout and stderr are separate pipes, so lines
    printed before a crash can land after its traceback: seen with docker); else the last
    unindented line."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if starts:
        for ln in lines[starts[-1] + 1:]:
            if ln.strip() and not ln.startswith((" ", "\t")):
                return ln
    return next((ln for ln in reversed(lines) if ln.strip() and not ln.startswith(" ")), "")


def _crash_reason(res: SandboxResult, log: Path, what: str) -> str:
    last = _exception_line(log_tail(log, 40))
    code = res.exit_code
    why = f"killed by signal {code - 128}" if code is not None and code > 128 else f"exited with code {code}"
    return f"{what} {why}" + (f": {last[:200]}" if last else "")


def train_status(res: SandboxResult, program: Program, budget: float, log: Path, what: str) -> tuple[str, str | None]:
    if res.disk_exceeded:
        return "crash", (f"disk limit: {what} wrote more than sandbox.disk_gb {program.sandbox.disk_gb:g} GB "
                         f"to its out/ folder and was killed")
    if res.timed_out:
        return "timeout", (f"{what} ran past its budget {budget:g} s + grace {program.budget.grace_seconds:g} s "
                           f"and was killed; make it finish and save in time")
    if res.oom:
        return "oom", f"{what} went over the memory limit ({program.sandbox.memory_gb:g} GB) and was killed"
    if res.exit_code != 0:
        return "crash", _crash_reason(res, log, what)
    return "ok", None


def inline_metric(log: Path, regex: str) -> float | None:
    """The last match of run.metric_regex in the log (its first group, else the whole match)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    last = None
    for m in re.finditer(regex, text, re.M):
        last = m
    if last is None:
        return None
    try:
        return float(last.group(1) if last.groups() else last.group(0))
    except (ValueError, TypeError):
        return None


# ---------------------------------------------------------------- one experiment

def run_experiment(root: Path, message: str, budget: float | None = None, seed: int | None = None,
                   backend: str | None = None, echo: TextIO | None = None,
                   purpose: str = "experiment") -> RunMetrics:
    """Run one experiment for root's current train script and record it in runs/NNNN/.

    Raises HarnessError before any run folder exists when it cannot run (program.md,
    backend, data, train script); KeyboardInterrupt (also on SIGTERM/SIGHUP) after the
    run is recorded as interrupted and its sandbox cleaned up. `echo` gets progress lines."""
    def say(line: str) -> None:
        if echo is not None:
            print(line, file=echo, flush=True)

    t_start = time.monotonic()
    started = _now()
    root = Path(root).resolve()
    try:
        program = load_program(root)
    except ConfigError as e:
        raise HarnessError(str(e)) from None
    budget_s = resolve_budget(program, budget)
    try:
        sandbox = choose_backend(backend or program.sandbox.backend, image=program.sandbox.image)
        sandbox.runtime()
    except SandboxUnavailable as e:
        raise HarnessError(str(e)) from None
    script = program.run.train_script
    try:
        code = (root / script).read_bytes()
    except OSError as e:
        raise HarnessError(f"cannot read the training script {root / script}: {e.strerror}") from None
    inline = program.run.mode == "inline"
    data = None if inline else data_folder(root)
    sha = sha256_bytes(code)
    seed_n = derive_seed(root, program, sha, seed)
    files = snapshot_files(root, program_code(program))
    files[script] = code                          # exactly the bytes that run
    with run_lock(root) as lock_fd:
        sweep_scratch(root)                       # a killed runner's .sandbox: no other run is live now
        run_dir = allocate_run_dir(root)
        _mark_holder(lock_fd, run_dir.name)
        running = _hold_running(run_dir)
        try:
            return _run_locked(root, program, run_dir, script, code, sha, snapshot_of(files), seed_n, budget_s,
                               sandbox, inline, data, message, purpose, started, t_start, say)
        finally:
            if running is not None:
                os.close(running)
            with contextlib.suppress(OSError):
                (run_dir / RUNNING).unlink()


def evaluator_version(root: Path, program: Program) -> str:
    """What scores a run, for the fingerprint: the scorer's fixed slice and context (prepare.py),
    or the inline regex. Two runs scored differently are never compared."""
    if program.run.mode == "inline":
        return f"inline:{hashlib.sha256((program.run.metric_regex or '').encode()).hexdigest()[:12]}"
    try:
        prep = load_prepare(root)
        return f"scorer:{int(prep.EVAL_BYTES)}B:ctx{int(prep.CONTEXT_LEN)}"
    except Exception:                                 # noqa: BLE001 -- a broken prepare.py fails the run later
        return "scorer:?"


def _run_locked(root: Path, program: Program, run_dir: Path, script: str, code: bytes, sha: str, snap: str,
                seed_n: int, budget_s: float, sandbox: Backend, inline: bool, data: Path | None, message: str,
                purpose: str, started: datetime, t_start: float, say) -> RunMetrics:
    """The run itself, with the project's run lock held."""
    fp = Fingerprint(budget_seconds=budget_s, eval_seconds=program.budget.eval_seconds, mode=program.run.mode,
                     metric=f"{program.metric.name}:{program.metric.direction}", backend=sandbox.name,
                     device=device_class(host_has_gpus()),
                     data=data_version(None if data is None else data / "val" / "val.bin"),
                     evaluator=evaluator_version(root, program))
    lay = Layout(root, run_dir, script)
    lay.hold()
    metrics = RunMetrics(
        run_id=run_dir.name, status="interrupted", metric_name=program.metric.name,
        direction=program.metric.direction, train_py_sha256=sha, seed=seed_n, budget_seconds=budget_s,
        grace_seconds=program.budget.grace_seconds, sandbox=sandbox.name,
        sandbox_warning=NONE_WARNING if sandbox.name == "none" else None,
        mode=program.run.mode, description=message, started_at=started,
        reason="did not finish: interrupted or killed (rewritten when a run ends)",
        snapshot_sha256=snap, fingerprint=fp, purpose=purpose)  # type: ignore[arg-type]
    metrics.write(run_dir)
    signals: list[str] = []
    home_dir: str | None = None
    try:
        with signals_as_interrupt(signals):
            lay.script_copy.write_bytes(code)
            lay.out.mkdir()
            lay.log.touch()
            note = write_diff(root, run_dir, script)
            if note:
                metrics.extra["diff"] = note
            if head := _head(root):
                metrics.extra["head"] = head
            say(f"run {run_dir.name}: sandbox {sandbox.describe()}")
            if sandbox.name == "none":
                home_dir = tempfile.mkdtemp(prefix="autoresearch-home-")
            env = base_env(sandbox, lay, home_dir or "/tmp", budget_s, seed_n)
            _execute(sandbox, program, lay, data, env, budget_s, inline, metrics)
    except KeyboardInterrupt:
        _finish_unmeasured(metrics, run_dir, t_start,
                           f"interrupted by {signals[-1] if signals else 'SIGINT (Ctrl-C)'}; the sandbox was stopped")
        raise
    except SandboxUnavailable as e:
        _finish_unmeasured(metrics, run_dir, t_start, f"harness error: {e}")
        raise HarnessError(str(e)) from None
    except Exception as e:              # a harness bug: keep the run marked unmeasured, never "crash"
        _finish_unmeasured(metrics, run_dir, t_start, f"harness error: {type(e).__name__}: {e}")
        raise
    finally:
        lay.cleanup()
        if home_dir:
            shutil.rmtree(home_dir, ignore_errors=True)
    metrics.finished_at = _now()
    metrics.total_seconds = round(time.monotonic() - t_start, 3)
    metrics.steps_per_s = steps_per_second(lay.log, metrics.train_seconds)
    metrics.write(run_dir)
    return metrics


def _finish_unmeasured(m: RunMetrics, run_dir: Path, t_start: float, reason: str) -> None:
    m.status, m.metric_value, m.reason = "interrupted", None, reason
    m.finished_at = _now()
    m.total_seconds = round(time.monotonic() - t_start, 3)
    m.write(run_dir)


def _execute(sandbox: Backend, program: Program, lay: Layout, data: Path | None, env: dict[str, str],
             budget: float, inline: bool, m: RunMetrics) -> None:
    """Both stages; fills m in place (status, metric, timings, memory, device, reason)."""
    rt = sandbox.runtime()
    argv = list(program.run.command or []) if inline else [rt.python, str(lay.root / lay.script)]
    if inline and argv and argv[0] in ("python", "python3"):
        argv[0] = rt.python
    spec = train_spec(sandbox, program, lay, data, env, budget, argv)
    with GpuPeak() as gpu:
        res = sandbox.run(spec)
    m.train_seconds = round(res.wall_seconds, 3)
    m.extra["limits"] = res.limits
    m.extra["train_exit_code"] = res.exit_code
    host_peak = res.peak_memory_bytes
    if gpu.peak_bytes is not None:
        m.extra["gpu_peak_gb"] = _gb(gpu.peak_bytes)
    m.device = "cuda" if spec.gpus else "cpu"
    what = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:3])) if inline else lay.script
    status, reason = train_status(res, program, budget, lay.log, what)
    if res.log_cut_bytes:
        m.extra["log_cut_bytes"] = res.log_cut_bytes
    if removed := clean_out(lay.out):
        m.extra["out_removed"] = ", ".join(removed)[:500] + (f" ({len(removed)} entries)" if len(removed) > 1 else "")
        _append_log(lay.log, f"\n[autoresearch: removed from out/ (only regular files and folders are kept): "
                             f"{m.extra['out_removed']}]\n")

    if inline:
        m.mode = "inline"
        if status == "ok":
            value = inline_metric(lay.log, program.run.metric_regex or "")
            if value is None or not math.isfinite(value):
                status, reason = "crash", f"no finite metric in the log matching run.metric_regex {program.run.metric_regex!r}"
            else:
                m.metric_value = value
        m.extra["warning"] = INLINE_WARNING
        reason = reason or INLINE_WARNING
    elif status == "ok":
        assert data is not None
        if program.metric.floor is not None:
            m.extra["metric_floor"] = program.metric.floor
        with contextlib.suppress(Exception):         # what the host re-checks the evaluator's byte count against
            m.extra["eval_bytes_expected"] = int(load_prepare(lay.root).EVAL_BYTES)
        _append_log(lay.log, "\n---- EVAL: the trusted scorer (autoresearch.run.scorer); what the model prints "
                             f"goes to {EVAL_LOG}, for humans only ----\n")
        eres, result = run_eval(sandbox, program, lay, data, env, data / "val" / "val.bin", lay.run_dir / EVAL_LOG)
        m.eval_seconds = round(eres.wall_seconds, 3)
        if eres.peak_memory_bytes is not None:
            host_peak = max(host_peak or 0, eres.peak_memory_bytes)
        status, reason = eval_status(eres, result, program)
        _append_log(lay.log, eval_line(status, reason, result, program.metric.name))
        if result is not None:
            m.device = result.get("device") or m.device
            m.eval_bytes = result.get("bytes")
            for k in ("load_seconds", "score_seconds", "servers", "requests", "check_windows",
                      "max_request_seconds"):
                if k in result:
                    m.extra[f"eval_{k}"] = result[k]
        if status == "ok":
            assert result is not None
            m.metric_value = float(result["value"])
    m.extra["host_peak_gb"] = _gb(host_peak)
    m.peak_memory_gb = m.extra.get("gpu_peak_gb") if m.extra.get("gpu_peak_gb") is not None else _gb(host_peak)
    m.status = status  # type: ignore[assignment]
    m.reason = reason
    if (bad := host_check(m)) is not None:           # the evaluator's checks again, outside its process
        m.status, m.reason = bad  # type: ignore[assignment]
    if m.status != "ok":
        m.metric_value = None


# ---------------------------------------------------------------- what the agent reads

def current_best(root: Path, program: Program, m: RunMetrics | None = None) -> tuple[float | None, str | None]:
    """(the best comparable with run `m` -- same fingerprint, measured on the branch tip's code --, why unknown)."""
    from ..gitops import GitError, head_commit
    from .identity import snapshot_at
    from ..ledger import current_best as best
    try:
        fp = m.fingerprint.key if m is not None and m.fingerprint else None
        head = head_commit(root) if fp else None
        snap = snapshot_at(root, head, program_code(program)) if head else None
        value = best(root, program.metric, fingerprint=fp, snapshot=snap)
        if value is None and fp and best(root, program.metric) is not None:
            return None, "no best at this fingerprint yet (budget, backend or data changed): a new baseline"
        return value, None
    except (ValueError, GitError, OSError) as e:   # a corrupt ledger must not hide the run's own result
        return None, f"best unknown ({type(e).__name__}: {str(e)[:120]})"


def summary(m: RunMetrics, program: Program, best: float | None, best_note: str | None, run_dir: Path,
            root: Path) -> list[str]:
    rel = run_dir.relative_to(root) if _inside(run_dir, root) else run_dir
    lines = [f"run {m.run_id}: {m.status}" + (f" -- {m.reason}" if m.reason and m.status != "ok" else "")]
    if m.status == "ok" and m.metric_value is not None:
        line = f"{m.metric_name}: {m.metric_value:.6f}"
        if best is not None:
            delta = m.metric_value - best
            verdict = ("better" if program.metric.better(m.metric_value, best)
                       else "same" if delta == 0 else "worse")
            line += f" | best {best:.6f} | delta {delta:+.6f} ({verdict})"
        else:
            line += f" | {best_note or 'no best yet (this would be the baseline)'}"
        lines.append(line)
        if m.mode == "inline":
            lines.append(f"note: {INLINE_WARNING}")
    else:
        tail = log_tail(run_dir / LOG_FILE)
        if tail:
            lines.append(f"--- last {len(tail)} lines of {rel / LOG_FILE} ---")
            lines += tail
            lines.append("---")
    mem = f"{m.peak_memory_gb:.2f} GB" if m.peak_memory_gb is not None else "unknown"
    parts = [f"peak memory {mem}", f"wall {m.total_seconds or 0:.1f} s (train {m.train_seconds or 0:.1f} s"
             + (f", eval {m.eval_seconds:.1f} s)" if m.eval_seconds is not None else ")"),
             f"seed {m.seed}", f"sandbox {m.sandbox}"]
    lines.append(" | ".join(parts))
    if m.sandbox_warning:
        lines.append("WARNING: " + m.sandbox_warning)
    lines.append(f"full log: {rel / LOG_FILE}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run.sh", description="Run one experiment for the current train.py.")
    ap.add_argument("-m", "--message", required=True, help="what changed and why (recorded with the run)")
    ap.add_argument("--budget", type=float, metavar="SECONDS", help="training budget (default: program.md)")
    ap.add_argument("--seed", type=int, help="seed (default: program seed + earlier runs of this train.py)")
    ap.add_argument("--backend", choices=["auto", "docker", "bwrap", "none"], help="sandbox (default: program.md)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """./run.sh; the exit code says how the run ended (autoresearch/run/exits.py)."""
    import traceback

    from .exits import RunExit, for_status
    args = build_parser().parse_args(argv)
    if not args.message.strip():
        print("run.sh: -m needs a message saying what changed and why", file=sys.stderr)
        return RunExit.NOT_STARTED
    try:
        root = project_root()
        program = load_program(root)
        m = run_experiment(root, args.message.strip(), budget=args.budget, seed=args.seed,
                           backend=args.backend, echo=sys.stdout)
    except RunBusy as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return RunExit.BUSY
    except HarnessError as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return RunExit.NOT_STARTED
    except ConfigError as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return RunExit.NOT_STARTED
    except KeyboardInterrupt:
        print("run.sh: interrupted; the run is marked interrupted and its sandbox stopped", file=sys.stderr)
        return RunExit.INTERRUPTED
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"run.sh: the disk is full ({e.filename or 'no space left on device'}): nothing more can be "
                  f"recorded; a human must free space (e.g. old runs/NNNN/out/ of runs that were not kept)",
                  file=sys.stderr)
            return RunExit.DISK_FULL
        traceback.print_exc()
        print(f"run.sh: harness error, not train.py's fault: {type(e).__name__}: {e}. The run is marked "
              "interrupted; fix the cause and run again.", file=sys.stderr)
        return RunExit.HARNESS
    except Exception as e:              # a harness bug: never reported as a crash of train.py
        traceback.print_exc()
        print(f"run.sh: harness error, not train.py's fault: {type(e).__name__}: {e}. The run is marked "
              "interrupted.", file=sys.stderr)
        return RunExit.HARNESS
    best, note = current_best(root, program, m)
    print("\n".join(summary(m, program, best, note, root / RUNS_DIR / m.run_id, root)), flush=True)
    return for_status(m.status)


if __name__ == "__main__":
    sys.exit(main())
