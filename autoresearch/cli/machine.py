"""Sandbox limits sized to this machine and the repo's launcher, for `autoresearch init`.

A fixed `memory_gb: 8, pids: 512` fits one small process; an 8-rank `torchrun` run with
DataLoader workers needs memory per rank, `pids` counts every thread (each rank's intra-op
pool and every worker's), and a 1 GB /dev/shm gives DataLoader bus errors. init proposes
limits from the machine (total memory, cores) and the ranks the training command starts;
the human can lower them in program.md.
"""
from __future__ import annotations

import os
import re

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
