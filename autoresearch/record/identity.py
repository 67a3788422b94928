"""What an experiment is, and which runs may be compared.

Snapshot: sha256 over every file of the editable set (program.md, current phase: its files,
folders and globs matched by Program.editable_files, the matcher the guard uses too) that is code --
path and content, in a fixed order. scratchpad.md is the agent's notes, not something a run
executes, so it is left out: otherwise every re-run would look like a new experiment. Two runs
with the same snapshot ran the same code.

Fingerprint: what else decides the number -- the training budget, the eval settings, the sandbox
backend and device class, the data version. Runs are compared or averaged only within one
fingerprint; a budget change starts a new baseline.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..program.sections import SAVE_MARGIN

NOTES = "scratchpad.md"                   # the editable file that is notes, not code
ABSENT = b"\0absent"                     # a listed file that does not exist (hashes differently from empty)


def code_files(editable: list[str]) -> list[str]:
    """The editable set less the notes, sorted: the files a snapshot covers."""
    return sorted(f for f in dict.fromkeys(editable) if f != NOTES)


def program_code(program, root: Path) -> list[str]:
    """The files a snapshot covers for this program: the editable set (current phase, its
    patterns matched below root) plus the train script."""
    return code_files(program.editable_files(root) + [program.run.train_script])


def snapshot_of(contents: dict[str, bytes | None]) -> str:
    """sha256 over (path, content) pairs; None means the file does not exist."""
    h = hashlib.sha256()
    for path in sorted(contents):
        data = contents[path]
        h.update(path.encode() + b"\0")
        h.update(hashlib.sha256(ABSENT if data is None else data).digest())
    return h.hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def snapshot_files(root: Path, editable: list[str]) -> dict[str, bytes | None]:
    return {f: _read(Path(root) / f) for f in code_files(editable)}


def snapshot(root: Path, editable: list[str]) -> str:
    """The work tree's snapshot of the editable set."""
    return snapshot_of(snapshot_files(root, editable))


def snapshot_at(root: Path, commit: str, editable: list[str]) -> str:
    """The snapshot of the editable set as committed at `commit`."""
    from ..gitops import show_blob
    return snapshot_of({f: show_blob(root, commit, f) for f in code_files(editable)})


AGENT_CLOCK = f"agent+{SAVE_MARGIN:.0%}"    # Fingerprint.clock of runs whose budget is agent compute


class Fingerprint(BaseModel):
    """Everything besides the code that decides the number. Equal fingerprints: comparable runs."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    budget_seconds: float
    eval_seconds: float
    mode: str                             # two_stage | inline
    metric: str                           # name:direction
    backend: str                          # docker | bwrap | none
    device: str                           # cpu | cuda:<model> | cuda:<model> xN (N GPUs)
    data: str                             # sha256 of the validation split (short), or "-"
    evaluator: str = "-"                  # what scores: the scorer's slice and context, or the inline regex
    interpreter: str = "-"                # run.python's path and version; "-": the harness's own Python
    # how the budget was counted: "-" the sandbox's wall clock + grace (records before issue 24);
    # AGENT_CLOCK agent compute after a trusted warm-up, killed at budget + save margin. Runs with
    # other clocks had other compute for the same budget: never compared.
    clock: str = "-"

    @property
    def key(self) -> str:
        # default fields are left out: keys of records from before those fields are unchanged
        d = self.model_dump(exclude={k for k in ("interpreter", "clock") if getattr(self, k) == "-"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def differs(self, other: "Fingerprint | None") -> str:
        """What changed from `other`, in words ("budget 5 s -> 10 s")."""
        if other is None:
            return "no earlier fingerprint"
        words = []
        for k, v in self.model_dump().items():
            o = getattr(other, k)
            if o != v:
                words.append(f"{k.replace('_seconds', '')} {o:g} s -> {v:g} s" if k.endswith("_seconds")
                             else f"{k} {o} -> {v}")
        return ", ".join(words) or "nothing"


def device_class(gpus: list[int]) -> str:
    """cpu, or cuda:<the first run GPU's model>, with " xN" for N > 1 GPUs (the model and count,
    not the indices: any H100 equals any H100, but a run on 8 is never compared with one on 1)."""
    if not gpus:
        return _cpu_class()
    count = f" x{len(gpus)}" if len(gpus) > 1 else ""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
                                  "-i", ",".join(map(str, gpus))],
                                 capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            if out:
                return f"cuda:{out[0].strip()}{count}"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"cuda{count}"


def _cpu_class() -> str:
    """cpu; "cpu (N of M cores)" when this process is pinned to a share of the cores (a wave's slot):
    a run on one core of two is not compared with one that had both."""
    try:
        n, total = len(os.sched_getaffinity(0)), os.cpu_count() or 0
    except (AttributeError, OSError):
        return "cpu"
    return "cpu" if not total or n >= total else f"cpu ({n} of {total} cores)"


def data_version(val_file: Path | None) -> str:
    """sha256 (short) of the validation split the metric is computed on; "-" when there is none."""
    if val_file is None:
        return "-"
    h = hashlib.sha256()
    try:
        with open(val_file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return "-"
    return h.hexdigest()[:16]
