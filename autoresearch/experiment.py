"""One experiment for the current train.py: `./run.sh -m "what changed and why"`.

    TRAIN  a fresh sandbox: the project read-only (runs/ hidden, train.py replaced by the
           hashed copy in runs/NNNN/), the train split only, runs/NNNN/out/ writable;
           killed from outside at budget + grace.
    EVAL   a fresh sandbox: `python -m autoresearch.evaluate`, the checkpoint read-only,
           no data mounted; the validation bytes arrive on stdin and the result comes
           back on stdout, which the evaluator keeps away from agent code.

Nothing the TRAIN stage writes or prints becomes the metric. Artifacts: runs/NNNN/
{metrics.json, train.log, train.py, diff.patch, out/}. metrics.json is written first
with status `interrupted` and rewritten when the run ends, so a run killed at any
point is marked interrupted. Exit code: 0 when the experiment ran and was recorded
(whatever its status), 130 when interrupted, 2 for harness errors (bad arguments,
program.md, missing backend or data), with the fix in the message.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, TextIO

from .config import ConfigError, Program, load_program, project_root
from .metrics import METRICS_FILE, RunMetrics
from .sandbox import (NONE_WARNING, Backend, Mount, SandboxResult, SandboxSpec, SandboxUnavailable,
                      choose_backend, host_has_gpus)

RUNS_DIR = "runs"
LOG_FILE = "train.log"
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


def allocate_run_dir(root: Path) -> Path:
    """runs/NNNN, the next free number; mkdir is the lock, so concurrent runs never share one."""
    runs = root / RUNS_DIR
    runs.mkdir(exist_ok=True)
    existing = run_dirs(root)
    n = int(existing[-1].name) + 1 if existing else 1
    while True:
        d = runs / f"{n:04d}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            n += 1


def write_diff(root: Path, run_dir: Path, script: str) -> str | None:
    """diff.patch of the train script against the branch head; returns a note when there is none."""
    from .gitops import GitError, git
    try:
        proc = git(root, "diff", "--no-ext-diff", "--no-textconv", "HEAD", "--", script)
        (run_dir / "diff.patch").write_text(proc.stdout)
        return None
    except (GitError, OSError) as e:
        note = f"no diff against a branch head: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        (run_dir / "diff.patch").write_text(f"# {note}\n")
        return note


def _head(root: Path) -> str | None:
    from .gitops import head_commit
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

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


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
    pkg = Path(__file__).resolve().parent
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
                       gpus=host_has_gpus(), log_path=lay.log)


def eval_spec(backend: Backend, program: Program, lay: Layout, data: Path, env: dict[str, str],
              nonce: str) -> SandboxSpec:
    pkg_mounts, pkg_path = package_mount()
    rt = backend.runtime()
    mounts = runtime_mounts(backend, lay.root) + project_mounts(lay, data) + [Mount(lay.out, str(lay.out))]
    mounts += [m for m in pkg_mounts if not _inside(m.source, lay.root)]
    env = {**env, "PYTHONPATH": f"{lay.root}:{pkg_path}", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    m = program.metric
    argv = [rt.python, "-m", "autoresearch.evaluate", "--project", str(lay.root), "--script", lay.script,
            "--checkpoint", str(lay.out / CHECKPOINT), "--metric", m.name, "--direction", m.direction]
    if m.floor is not None:
        argv += ["--floor", repr(m.floor)]
    val = (data / "val" / "val.bin").read_bytes()
    return SandboxSpec(argv=argv, mounts=mounts, env=env, cwd=str(lay.root),
                       timeout_s=program.budget.eval_seconds,
                       memory_bytes=int(program.sandbox.memory_gb * 2**30), pids=program.sandbox.pids,
                       gpus=host_has_gpus(), stdin_data=nonce.encode() + b"\n" + val,
                       capture_stdout=True, log_path=lay.log)


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
    if res.timed_out:
        return "timeout", (f"{what} ran past its budget {budget:g} s + grace {program.budget.grace_seconds:g} s "
                           f"and was killed; make it finish and save in time")
    if res.oom:
        return "oom", f"{what} went over the memory limit ({program.sandbox.memory_gb:g} GB) and was killed"
    if res.exit_code != 0:
        return "crash", _crash_reason(res, log, what)
    return "ok", None


def parse_eval(res: SandboxResult, nonce: str) -> dict | None:
    """The evaluator's one JSON line with our nonce, or None."""
    for line in reversed(res.stdout.decode("utf-8", "replace").splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) and obj.get("nonce") == nonce else None
    return None


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
                   backend: str | None = None, echo: TextIO | None = None) -> RunMetrics:
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
    sha = hashlib.sha256(code).hexdigest()
    seed_n = derive_seed(root, program, sha, seed)

    run_dir = allocate_run_dir(root)
    lay = Layout(root, run_dir, script)
    metrics = RunMetrics(
        run_id=run_dir.name, status="interrupted", metric_name=program.metric.name,
        direction=program.metric.direction, train_py_sha256=sha, seed=seed_n, budget_seconds=budget_s,
        grace_seconds=program.budget.grace_seconds, sandbox=sandbox.name,
        sandbox_warning=NONE_WARNING if sandbox.name == "none" else None,
        mode=program.run.mode, description=message, started_at=started,
        reason="did not finish: interrupted or killed (rewritten when a run ends)")
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
        nonce = secrets.token_hex(16)
        _append_log(lay.log, "\n---- EVAL: the trusted evaluator (autoresearch.evaluate) ----\n")
        eres = sandbox.run(eval_spec(sandbox, program, lay, data, env, nonce))
        m.eval_seconds = round(eres.wall_seconds, 3)
        if eres.peak_memory_bytes is not None:
            host_peak = max(host_peak or 0, eres.peak_memory_bytes)
        result = parse_eval(eres, nonce)
        if eres.timed_out:
            status, reason = "timeout", f"the evaluation ran past eval_seconds {program.budget.eval_seconds:g} s"
        elif eres.oom:
            status, reason = "oom", f"the evaluation went over the memory limit ({program.sandbox.memory_gb:g} GB)"
        elif eres.exit_code != 0 or result is None:
            status, reason = "crash", _crash_reason(eres, lay.log, "the evaluator") + (
                "" if eres.exit_code != 0 else " (no result line)")
        else:
            status, reason = str(result.get("status")), result.get("reason")
            if status not in ("ok", "invalid", "crash"):
                status, reason = "crash", f"the evaluator answered an unknown status {status!r}"
            m.device = result.get("device") or m.device
            m.eval_bytes = result.get("bytes")
            for k in ("load_seconds", "probe_seconds", "score_seconds"):
                if k in result:
                    m.extra[f"eval_{k}"] = result[k]
            if result.get("gpu_peak_gb") is not None:
                m.extra["eval_gpu_peak_gb"] = result["gpu_peak_gb"]
            if status == "ok":
                value = result.get("value")
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    status, reason = "invalid", f"the evaluator returned no finite value ({value!r})"
                else:
                    m.metric_value = float(value)
    m.extra["host_peak_gb"] = _gb(host_peak)
    m.peak_memory_gb = m.extra.get("gpu_peak_gb") if m.extra.get("gpu_peak_gb") is not None else _gb(host_peak)
    m.status = status  # type: ignore[assignment]
    m.reason = reason
    if status != "ok":
        m.metric_value = None


# ---------------------------------------------------------------- what the agent reads

def current_best(root: Path, program: Program) -> tuple[float | None, str | None]:
    """(best kept value, why unknown)."""
    from .gitops import GitError
    from .ledger import current_best as best
    try:
        return best(root, program.metric), None
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
    """./run.sh; the exit code says how the run ended (autoresearch/exits.py)."""
    import errno
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
        traceback.print_exc()
        why = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e}"
        print(f"run.sh: harness error, not train.py's fault: {why}. The run is marked interrupted; "
              "free space (or fix the cause) and run again.", file=sys.stderr)
        return RunExit.HARNESS
    except Exception as e:              # a harness bug: never reported as a crash of train.py
        traceback.print_exc()
        print(f"run.sh: harness error, not train.py's fault: {type(e).__name__}: {e}. The run is marked "
              "interrupted.", file=sys.stderr)
        return RunExit.HARNESS
    best, note = current_best(root, program)
    print("\n".join(summary(m, program, best, note, root / RUNS_DIR / m.run_id, root)), flush=True)
    return for_status(m.status)


if __name__ == "__main__":
    sys.exit(main())
