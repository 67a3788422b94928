"""The run folder and the runs/ listing: where one run's files live, which run ids exist, how a
new one is numbered, and the locks that say a run is live. Where each place is and who may read it
is the flow table's (autoresearch/record/flows.py); this module only computes the paths.

    runs/NNNN/       one run: metrics.json, train.log, the train script's copy, diff.patch (what the
                     agent may read there, by name), out/ (TRAIN's only writable mount that outlives it)
    state folder     <state>/projects/<project id>/ OUTSIDE the project (flows.state_dir), never a
                     path the agent can read or a later stage sees:
        runs/NNNN/   the run's scratch: stand-in folders and the stages' work copies, the metric
                     channel (removed at the end; a killed run's is swept by the next)
        logs/NNNN/   eval.log and final.log: what agent code printed while it saw held-out windows,
                     for the human only
    run ids          never reused: above every folder in runs/, the counter in
                     .autoresearch/run-counter, and every id in the run branches' trailers and the ledger
    run.lock         .autoresearch/run.lock: one run at a time per project (an flock)
    .running         runs/NNNN/.running: flock held while that run is live (the loop reads it)
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..atomic import write_atomic
from .flows import state_dir
from ..fsclean import remove_tree, tidy_tree
from .exits import RunBusy

RUNS_DIR = "runs"
RUN_ID = re.compile(r"^\d{4,}$")
STATE_DIR = ".autoresearch"               # trusted state (the loop's state.json lives there too)
RUN_COUNTER = "run-counter"
RUN_LOCK = "run.lock"
RUNNING = ".running"                      # runs/NNNN/.running: flock held while that run is live
SCRATCH_LOCK = ".lock"
LOG_FILE = "train.log"
EVAL_LOG = "eval.log"
FINAL_LOG = "final.log"
CHECKPOINT = "model.pt"
LEGACY_SCRATCH = ".sandbox"               # runs/NNNN/.sandbox: where older versions kept the scratch
OUT_DEPTH = 64                            # folders below out/ deeper than this are removed after TRAIN


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def state_id(root: Path) -> str:
    """Short id of the project's folder (its real path, which the agent cannot change): the key of
    its state folder, and docker's owner label. Not the project's identity (keys.identity: survives
    a move, names its signing keys) nor export's lineage id (its first commit)."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def state_folder(root: Path) -> Path:
    """The project's state folder outside the project (flows.state_dir)."""
    return Path(state_dir(state_id(root)))


def eval_log(root: Path, run_id: str) -> Path:
    """What run `run_id`'s model servers (or eval.command) printed: the human's only (flows: eval log)."""
    return state_folder(root) / "logs" / run_id / EVAL_LOG


def final_log(root: Path, run_id: str) -> Path:
    """What the model printed when `autoresearch final` scored run `run_id` (flows: final log)."""
    return state_folder(root) / "logs" / run_id / FINAL_LOG


def private_dir(path: Path) -> Path:
    """mkdir -p, the new folders 0700 (a state folder is the host user's alone)."""
    for p in reversed([path, *path.parents]):
        if not p.exists():
            with contextlib.suppress(FileExistsError):
                p.mkdir(mode=0o700)
    return path


def new_log(path: Path, first_line: str) -> Path:
    """A fresh human-only log, its folders private."""
    private_dir(path.parent)
    path.write_text(first_line)
    return path


@dataclass
class Layout:
    """Paths of one run, and the stand-in folders that hide parts of the project (kept in the
    run's scratch in the state folder, outside the project: nothing a stage writes there is ever
    where the agent or a later stage reads; a kill -9 leaves it to the next run's sweep)."""
    root: Path
    run_dir: Path
    script: str                                   # relative to root, e.g. "train.py"
    snapshot: dict[str, bytes | None] = field(default_factory=dict)   # the editable set as the run started
    base: str | None = None                       # the commit the work copies hold (workcopy.py); "" none
    outputs: tuple[str, ...] = ()                 # run.outputs: empty and writable in each work copy

    @property
    def scratch(self) -> Path:
        return state_folder(self.root) / RUNS_DIR / self.run_dir.name

    @property
    def eval_log(self) -> Path:
        return eval_log(self.root, self.run_dir.name)

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

    def code_copies(self) -> list[tuple[Path, str]]:
        """(copy, project path) for every file of the snapshot besides the script (which has its
        own copy): both stages run exactly the snapshot the run is identified by, whatever the
        work tree holds meanwhile. Written once, into .sandbox/code/."""
        out = []
        for rel, data in sorted(self.snapshot.items()):
            if data is None or rel == self.script:
                continue
            copy = self.scratch / "code" / rel
            if not copy.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_bytes(data)
            out.append((copy, str(self.root / rel)))
        return out

    def empty(self) -> Path:
        d = self.scratch / "empty"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def empty_file(self) -> Path:
        f = self.scratch / "empty-file"
        if not f.is_file():
            self.scratch.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"")
        return f

    def hold(self) -> None:
        """Mark the scratch as in use (an flock held until this process ends), so a later run
        that finds it can tell a live run's folder from a killed one's."""
        private_dir(self.scratch)
        fd = os.open(self.scratch / SCRATCH_LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def cleanup(self) -> str:
        """Remove the run's scratch (fsclean: whatever agent code left there); "" or one line on
        what would not go (then set aside, so the next run starts)."""
        line = remove_tree(self.scratch).line()
        if (fd := getattr(self, "_lock_fd", None)) is not None:
            os.close(fd)
            self._lock_fd = None
        return line


# ---------------------------------------------------------------- the runs/ listing

def run_ids(root: Path) -> list[str]:
    """The ids of the run folders in runs/ (runs/NNNN: four or more digits), oldest first. No
    runs/ yet is no runs; a runs/ that is not a folder raises NotADirectoryError (a broken
    project must be said, not read as "nothing ran")."""
    d = Path(root) / RUNS_DIR
    try:
        with os.scandir(d) as it:              # the entry's type from the listing: no stat per run (1,000 a night)
            return sorted((e.name for e in it if RUN_ID.match(e.name) and e.is_dir()), key=int)
    except FileNotFoundError:
        return []


def run_dirs(root: Path) -> list[Path]:
    """The run folders in runs/, oldest first (see run_ids)."""
    return [root / RUNS_DIR / r for r in run_ids(root)]


# ---------------------------------------------------------------- run ids: never reused

def reserve_run_id(root: Path, floor: int) -> int:
    """The next run number: above `floor` and above every number handed out before (the counter
    in .autoresearch/run-counter, trusted state), under the counter's own flock."""
    state = Path(root) / STATE_DIR
    path = state / RUN_COUNTER
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(RUN_COUNTER + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            last = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            last = 0
        n = max(last, floor) + 1
        write_atomic(path, f"{n}\n")
        return n
    finally:
        os.close(fd)


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


def _used(root: Path) -> int:
    """The highest run id the project shows: a folder in runs/, a keep commit's trailer, a ledger row."""
    existing = run_dirs(root)
    return max([int(existing[-1].name) if existing else 0] + _trailer_run_ids(root) + _ledger_run_ids(root))


def allocate_run_dir(root: Path) -> Path:
    """runs/NNNN with a number never used before in this project: above every folder in runs/,
    the counter in trusted state, every run id in the run branches' trailers and the ledger --
    so deleting runs/ cannot make a new run take a decided run's id. mkdir is the lock."""
    runs = root / RUNS_DIR
    runs.mkdir(exist_ok=True)
    n = reserve_run_id(root, _used(root))
    while True:
        d = runs / f"{n:04d}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            n = reserve_run_id(root, n)


def take_run_id(root: Path, want: int) -> Path | None:
    """runs/<want> for a run id reserved earlier (a warm TRAIN's, run/warm.py), if it is still the
    next one: the last reserved, above every folder, trailer and ledger id. Else None."""
    runs = root / RUNS_DIR
    floor = _used(root)
    try:
        last = int((Path(root) / STATE_DIR / RUN_COUNTER).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if want <= floor or last != want:
        return None
    d = runs / f"{want:04d}"
    try:
        runs.mkdir(exist_ok=True)
        d.mkdir()
    except OSError:
        return None
    return d


# ---------------------------------------------------------------- one run at a time

@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[int]:
    """One run at a time per project: an exclusive flock on .autoresearch/run.lock for the whole
    run (the kernel drops it when the runner dies, so a kill -9 leaves no stale lock). Two runs at
    once would each get a fraction of the machine and be measured wrongly."""
    d = root / STATE_DIR
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
            raise RunBusy(f"a run is in progress ({holder or 'another ./run.sh'}, or a wave: ./run.sh --wait); "
                          f"wait for it to finish and print its result, then run again") from None
        yield fd
    finally:
        os.close(fd)


def mark_holder(fd: int, run_id: str) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {run_id}, pid {os.getpid()}\n".encode(), 0)


def lock_held(path: Path, exclusive: bool = False) -> bool:
    """Does another process hold a flock on `path` right now? (A missing file: nobody does.) The
    one probe for .running, a slot's lock and the like; `exclusive` also sees shared holders."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def hold_running(run_dir: Path) -> int | None:
    """runs/NNNN/.running, flock held until the runner exits: `runscan` reads a held lock as live."""
    try:
        fd = os.open(run_dir / RUNNING, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    except OSError:
        return None


# ---------------------------------------------------------------- leftovers

def sweep_scratch(root: Path) -> list[str]:
    """Remove the scratch left by killed runners (nobody holds their lock), and any runs/*/.sandbox
    an older version left inside the project; returns run ids."""
    gone = []
    try:
        here = sorted((d for d in (state_folder(root) / RUNS_DIR).iterdir() if RUN_ID.match(d.name)), key=lambda d: int(d.name))
    except OSError:
        here = []
    for scratch in here + [d / LEGACY_SCRATCH for d in run_dirs(root)]:
        d = scratch if scratch.name != LEGACY_SCRATCH else scratch.parent
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
            remove_tree(scratch)                       # never raises; what stays is set aside
            gone.append(d.name)
        finally:
            if fd is not None:
                os.close(fd)
    return gone


def clean_out(out: Path) -> list[str]:
    """After TRAIN: keep only regular files and folders in out/, at most OUT_DEPTH deep (no links,
    FIFOs, sockets or devices, which host-side tools would follow or block on; no folder chain
    that recursion-bound tools choke on) and strip set-id bits. Returns what was removed,
    relative to out/."""
    return tidy_tree(out, max_depth=OUT_DEPTH)
