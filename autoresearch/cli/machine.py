"""Sandbox limits sized to this machine and the repo's launcher, for `autoresearch init`.

A fixed `memory_gb: 8, pids: 512` fits one small process; an 8-rank `torchrun` run with
DataLoader workers needs memory per rank, `pids` counts every thread (each rank's intra-op
pool and every worker's), and a 1 GB /dev/shm gives DataLoader bus errors. init proposes
limits from the machine (total memory, cores) and the ranks the training command starts;
the human can lower them in program.md. `disk_plan` sizes a night's disk (run folders,
checkpoints, logs) from the runs already made, so `overnight` warns before it starts.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from pydantic import BaseModel

BASE_MEMORY_GB = 8.0
MEMORY_SHARE = 0.75                # never more than this share of the machine's memory
BASE_PIDS = 512
THREADS_PER_CORE_PER_RANK = 4      # intra-op pool + DataLoader workers and their threads
MAX_PIDS = 32768


def machine_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def ranks(command: list[str] | None) -> int:
    """Processes the training command starts: torchrun's --nproc-per-node, Lightning/Hydra's
    devices=N; 1 when it names none."""
    words = list(command or [])
    for i, w in enumerate(words):
        m = re.fullmatch(r"--nproc[-_]per[-_]node(?:=(\d+))?", w) or \
            re.fullmatch(r"(?:--|\+{0,2})(?:[\w.]*\.)?devices=(\d+)", w)
        if m:
            n = m.group(1) if m.groups() and m.group(1) else (words[i + 1] if i + 1 < len(words) else "")
            if n.isdigit() and int(n) > 0:
                return int(n)
        if w in ("--devices", "--gpus") and i + 1 < len(words) and words[i + 1].isdigit() and int(words[i + 1]) > 0:
            return int(words[i + 1])
    return 1


def sandbox_limits(command: list[str] | None, memory_gb: float | None = None,
                   cpus: int | None = None) -> dict[str, float | int]:
    """{memory_gb, pids, shm_gb} for program.md: BASE_MEMORY_GB per rank, capped at
    MEMORY_SHARE of the machine; threads for every core of every rank; /dev/shm 2 GB per rank,
    at most half the memory. `memory_gb`/`cpus`: the machine's (read here when None)."""
    total = memory_gb if memory_gb is not None else machine_memory_gb()
    cores = cpus if cpus is not None else (os.cpu_count() or 1)
    n = ranks(command)
    mem = BASE_MEMORY_GB * n
    if total:
        mem = min(mem, max(1.0, int(total * MEMORY_SHARE)))
    mem = float(int(mem)) if mem >= 1 else 1.0
    pids = min(MAX_PIDS, max(BASE_PIDS, n * (64 + THREADS_PER_CORE_PER_RANK * cores)))
    shm = round(min(mem / 2, 2.0 * n), 1)
    return {"memory_gb": mem, "pids": int(pids), "shm_gb": shm}


# ------------------------------------------------------------------------------------ disk

MEASURED = 10                       # the latest run folders whose size is the estimate


class DiskPlan(BaseModel):
    """How much disk a night needs: every run leaves runs/NNNN/ (train.log, metrics, snapshot, diff,
    and out/ with its checkpoints and the logs the repo writes in its own tree). A run that cannot
    be recorded is lost, and the Stop hook ends the night below `reserve_bytes`, so a night that
    will not fit is said before it starts, not found at 3 a.m."""
    per_run_bytes: int                 # median size of the measured run folders
    out_bytes: int                     # of which out/: freed for runs not kept when space runs low
    measured: list[str]                # the folders measured (runs/NNNN, or init's check runs)
    runs: int                          # runs the night may make: its hours at the measured pace, at most
                                       # the phase's max_experiments (the loop stops there)
    need_bytes: int                    # every run's folder whole
    need_pruned_bytes: int             # out/ freed for all but the kept (assumed: one in four)
    free_bytes: int
    reserve_bytes: int                 # loop/stop.py min_free: the Stop hook ends the night below it

    @property
    def fits(self) -> bool:
        return self.need_bytes + self.reserve_bytes <= self.free_bytes

    def warning(self) -> str | None:
        """None when the night fits; else what will happen and the fix."""
        if self.fits:
            return None
        gb = lambda b: f"{b / 2**30:.1f} GB"          # noqa: E731
        what = (f"a night of up to {self.runs} runs needs about {gb(self.need_bytes)} on this disk "
                f"({gb(self.per_run_bytes)} per run, measured on {len(self.measured)} run folder(s)), and "
                f"{gb(self.free_bytes)} is free ({gb(self.reserve_bytes)} kept in reserve)")
        if self.need_pruned_bytes + self.reserve_bytes <= self.free_bytes:
            return (f"{what}: the loop will delete the checkpoints (runs/NNNN/out/) of runs not kept when "
                    "space runs low; to keep them, free space first")
        return (f"{what}, even with the checkpoints of runs not kept deleted: the night will stop early. "
                "Free space, shorten --hours, or make the repo write fewer or smaller checkpoints")


def _size(folder: Path) -> int:
    total = 0
    try:
        for f in folder.rglob("*"):
            with contextlib.suppress(OSError):
                if f.is_file() and not f.is_symlink():
                    total += f.stat().st_size
    except (OSError, RecursionError):
        pass
    return total


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2] if ys else 0.0


def disk_plan(root: Path, program, hours: float) -> DiskPlan | None:
    """The disk a night of `hours` needs, from the run folders already there (the baseline's, else
    init's check runs); None before any run was made (nothing to measure yet)."""
    from ..loop.stop import min_free
    from ..record import RUNS_DIR, STATE_DIR, read_verified, run_ids
    root = Path(root)
    folders = [root / RUNS_DIR / r for r in run_ids(root)][-MEASURED:]
    if not folders:
        checks = root / STATE_DIR / "checks"
        folders = sorted((d for d in checks.iterdir() if d.is_dir()), key=lambda d: d.name)[-MEASURED:] \
            if checks.is_dir() else []
    if not folders:
        return None
    sizes = [_size(d) for d in folders]
    outs = [_size(d / "out") for d in folders]
    seconds: list[float] = []
    for d in folders:
        with contextlib.suppress(OSError, ValueError):
            m = read_verified(d)
            if m.total_seconds:
                seconds.append(m.total_seconds)
    pace = _median(seconds) or (program.budget.train_seconds + program.budget.grace_seconds)
    slots = program.executor.slots or 1
    runs = max(1, min(int(hours * 3600 / max(pace, 1.0)) * slots, program.current.max_experiments + 1))
    per_run, out = int(_median(sizes)), int(_median(outs))
    kept = max(1, runs // 4)
    usage = shutil.disk_usage(root)
    return DiskPlan(per_run_bytes=per_run, out_bytes=out, measured=[str(d.relative_to(root)) for d in folders],
                    runs=runs, need_bytes=runs * per_run, need_pruned_bytes=runs * (per_run - out) + kept * out,
                    free_bytes=usage.free, reserve_bytes=min_free(usage.total))
