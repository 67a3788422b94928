"""Whose fault is a crash: the agent's change, or the environment it ran in?

A crash the environment caused (a stale output folder from a manual run shown read-only, a
module the repo's own environment lacks, CUDA asked of a CPU machine, the sandbox's memory,
pids or /dev/shm limit, a busy machine's slow start-up) says nothing about the change. Blaming
the agent and reverting teaches it the wrong lesson and throws away a good idea; every later
experiment crashes the same way. Such a run is recorded as an environment crash, with the
setting a human changes, is not counted as an experiment, and reverts nothing (stop.py).

Two kinds of evidence:
  certain   the cause lies outside the edited code whatever the change: an untracked project
            folder (left by a manual run) the run could not write or found in the way; a module
            the best's own code imports too, or one that is the repo's own file; the sandbox's
            pids or /dev/shm limit.
  code-tied a download (runs have no network), CUDA on a machine without one, going over sandbox.memory_gb, a timeout, reading
            held-out data only the eval stages see (a repo that evaluates inside training): the
            environment's fault only when the code that crashed is the best's own or the
            baseline (no keep yet) -- a change that doubles the batch is the agent's.

The log is agent-written, so this only ever excuses a crash: an "environment" verdict never
keeps anything and never records a metric; the worst a forged log buys is a stop for a human.
"""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from ..gitops import git, show_blob
from ..program import Program
from ..run import log_tail
from .decide import ENV_NOTE
from .runscan import RunRecord


_READ_ONLY = re.compile(r"\[Errno (?:30\] Read-only file system|13\] Permission denied): '([^']+)'")
_EXISTS = re.compile(r"\[Errno 17\] File exists: '([^']+)'|([\w./-]+)'? (?:already exists|exists and is not empty)")
_MISSING = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")
_CUDA = re.compile(
    r"Torch not compiled with CUDA|no CUDA GPUs are available|Found no NVIDIA driver|CUDA driver version"
    r"|CUDA is not available|libcudart|libcuda\.so", re.I)
_PIDS = re.compile(r"can't start new thread|Resource temporarily unavailable|fork: retry|"
                   r"pthread_create failed|Cannot allocate memory.*thread", re.I)
_SHM = re.compile(r"/dev/shm|Bus error|killed by signal 7\b|insufficient shared memory|unable to write to file "
                  r"</torch_|shm_open", re.I)


_NOT_FOUND = re.compile(r"No such file or directory: '(/[^']+)'")
# a download or a connection attempt; runs have no network (torch.hub prints `Downloading: "URL" to PATH`)
NETWORK = re.compile(r"Name or service not known|Temporary failure in name resolution|Network is unreachable|"
                     r"getaddrinfo failed|Failed to establish a new connection|MaxRetryError|"
                     r"urlopen error|LocalEntryNotFoundError|offline mode is enabled", re.I)
_DOWNLOAD = re.compile(r"""Downloading:? ["']?(https?://[^\s"']+)["']?(?: to (\S+))?""")


def network_cause(text: str) -> tuple[str, str] | None:
    """(what, fix) when the output shows a run reaching for the network, which runs never have."""
    if not NETWORK.search(text):
        return None
    d = _DOWNLOAD.search(text)
    what = (f"the run tried to download {d.group(1)}" + (f" (to {d.group(2)})" if d.group(2) else "")
            if d else "the run tried to reach the network") + ", and runs have none"
    return what, ("download it once by hand, outside the loop, into a folder and name that folder in program.md "
                  "as sandbox.cache (runs see it as $XDG_CACHE_HOME, where torch.hub, Hugging Face and timm look; "
                  "torch.hub: <cache>/torch/hub/checkpoints/), with the library's offline switch in run.env")


def _eval_only(program: Program, path: str) -> str | None:
    """The mount `path` lies under when TRAIN does not see it but the eval stages do."""
    from ..hostenv import stage_mounts
    p = Path(path)
    train = stage_mounts(program.mounts, "train")
    if any(p == t or t in p.parents for t in train):
        return None
    for stage in ("eval", "final"):
        for m in stage_mounts(program.mounts, stage):
            if p == m or m in p.parents:
                return str(m)
    return None


class EnvCause(BaseModel):
    """An environment crash: what happened, and the setting a human changes."""
    kind: str      # stale-outputs | read-only | missing-module | pids | shm | eval-in-train | network | cuda | memory
                   # | start-up
    what: str
    fix: str

    @property
    def note(self) -> str:
        return f"{ENV_NOTE} {self.kind}: {self.what}"


def _text(run: RunRecord) -> str:
    reason = (run.metrics.reason if run.metrics else run.problem) or ""
    return reason + "\n" + "\n".join(log_tail(run.path / "train.log", 60))


def _untracked_top(root: Path, path: str) -> str | None:
    """The project folder (or file) `path` lies in when it exists and git does not track it: what a
    manual run left behind. The path is as the run saw it (relative, or inside its work copy)."""
    parts = [x for x in Path(path).parts if x not in (".", "", "/")]
    if ".." in parts:
        return None
    absolute = Path(path).is_absolute()
    for i in range(len(parts)):                          # the work copy's prefix is unknown: try each tail
        rel = parts[i]
        if rel in ("runs", ".autoresearch", ".git") or not (root / rel).exists():
            continue
        if absolute and not (root / Path(*parts[i:])).parent.exists():
            continue                                     # /data/x/f.bin is not the project's data/
        p = git(root, "ls-files", "-z", "--", rel, check=False)
        if p.returncode == 0 and not p.stdout:
            return rel
    return None


def _imports(root: Path, commit: str, files: list[str], module: str) -> bool:
    top = re.escape(module.split(".")[0])
    rx = re.compile(rf"^\s*(?:import\s+{top}\b|from\s+{top}\b)", re.M)
    return any(rx.search((show_blob(root, commit, f) or b"").decode("utf-8", "replace")) for f in files)


def _repo_module(root: Path, module: str) -> str | None:
    top = module.split(".")[0]
    p = git(root, "ls-files", "-z", "--", f"{top}.py", f"*/{top}.py", f"{top}/__init__.py",
            f"*/{top}/__init__.py", check=False)
    found = [f for f in p.stdout.split("\0") if f] if p.returncode == 0 else []
    return found[0] if found else None


def environment_cause(root: Path, program: Program, run: RunRecord, head: str, code: list[str],
                      best_code: bool) -> EnvCause | None:
    """Why the environment, not the change, made `run` fail; None when it may be the change.
    `best_code`: the run ran the best's own code, or there is no keep yet (the baseline)."""
    if run.status == "ok" or run.metrics is None or run.status == "interrupted":
        return None
    root = Path(root)
    text = _text(run)
    sb = program.sandbox
    for rx, kind in ((_READ_ONLY, "read-only"), (_EXISTS, "stale-outputs")):
        m = rx.search(text)
        path = next((g for g in m.groups() if g), "") if m else ""
        if path and (top := _untracked_top(root, path)):
            return EnvCause(kind=kind, what=f"the run {'could not write' if kind == 'read-only' else 'found'} "
                            f"{path} in {top}/, an untracked folder of the project (an earlier run by hand "
                            f"left it), which runs see read-only", fix=f"add {top} to run.outputs in program.md "
                            f"(each run then gets its own empty, writable {top}/), or move the folder away")
    if m := _MISSING.search(text):
        mod = m.group(1)
        own = _repo_module(root, mod)
        if own:
            src = str(Path(own).parent) if "/" in own else "."
            return EnvCause(kind="missing-module", what=f"the repo's own module {mod!r} ({own}) was not on the "
                            f"import path", fix=f"add {src} to run.source_roots in program.md (its folders are "
                            f"on the import path of TRAIN and the model servers)")
        if _imports(root, head, code, mod):
            return EnvCause(kind="missing-module", what=f"the module {mod!r}, which the best's own code imports "
                            f"too, is not installed in the run's environment", fix="point run.python in "
                            "program.md at the repo's own environment, or a human installs it there "
                            "(`autoresearch doctor` shows which interpreter runs)")
    if _PIDS.search(text):
        return EnvCause(kind="pids", what="the run could not start another thread or process",
                        fix=f"raise sandbox.pids in program.md (now {sb.pids}; it counts threads: DataLoader "
                            f"workers and BLAS threads each take some)")
    if run.status != "oom" and _SHM.search(text):
        return EnvCause(kind="shm", what="/dev/shm ran out (DataLoader workers share batches through it)",
                        fix=f"raise sandbox.shm_gb in program.md (now {sb.shm:g} GB; it counts toward memory_gb)")
    if not best_code:                       # a change that reads held-out data is the agent's, never excused
        return None
    m = run.metrics
    if (nf := _NOT_FOUND.search(text)) and (held := _eval_only(program, nf.group(1))):
        return EnvCause(kind="eval-in-train", what=f"the training script reads {nf.group(1)}, under {held}, which "
                        f"only the eval stages see: the repo evaluates inside training",
                        fix="move that evaluation into eval.command (it runs with the eval mounts), or switch it "
                            "off in training with a flag on run.command")
    if net := network_cause(text):
        return EnvCause(kind="network", what=net[0], fix=net[1])
    if _CUDA.search(text) and (m.device or "cpu").startswith("cpu"):
        return EnvCause(kind="cuda", what="the code asks for CUDA and this machine's runs have no GPU",
                        fix="run the loop on a GPU machine (sandbox.gpus), or a human makes the baseline fall back "
                            "to the CPU (torch.cuda.is_available())")
    if run.status == "oom":
        return EnvCause(kind="memory", what=f"the best's own code went over sandbox.memory_gb ({sb.memory_gb:g} GB)",
                        fix="raise sandbox.memory_gb in program.md (`autoresearch doctor` shows the machine's memory)")
    if run.status == "timeout":
        return EnvCause(kind="start-up", what="the best's own code ran past its budget (a busy machine or a slow "
                        "start-up: imports, data loading, compilation)",
                        fix=f"raise budget.grace_seconds in program.md (now {program.budget.grace_seconds:g} s), or "
                            "run on a quieter machine")
    return None


def consecutive(rows: list, branch: str, kind: str) -> int:
    """How many of the branch's latest rows, in a row, are environment crashes of this kind."""
    n = 0
    for r in reversed([r for r in rows if r.branch == branch]):
        if not r.note.startswith(f"{ENV_NOTE} {kind}:"):
            break
        n += 1
    return n
