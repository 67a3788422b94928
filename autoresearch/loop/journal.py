"""One decision, applied so that a kill at any instant is finished by the next hook call.

The Stop hook first writes everything the decision needs into .autoresearch/pending/ (snapshots
of the files to commit, then journal.json, atomically, last). From then on `apply` runs steps
that each check whether they are already done, so running it twice never does anything twice:

  1. branch   HEAD on the run branch (created from the user's HEAD if new; refs only, the
              work tree is not touched, the user's branch never moves)
  2. commit   keep: a commit of the snapshots on top of `parent`, built in a private index and
              moved in with a compare-and-swap update-ref; done if the branch tip already is
              our commit (its Autoresearch-Run trailer). Then the real index learns the new blobs.
     revert   discard/crash: each code file gets its content at `parent` back -- only if it
              still holds what was decided on (newer edits by the agent are left alone); a copy
              of what ran is in runs/NNNN/ (or .autoresearch/reverted/) before anything is reverted.
  3. ledger   rows appended unless their run id is there (ledger.append_rows is idempotent)
  4. state    last decision, idle counter (idempotent assignments)
  5. done     the pending folder is removed

Nothing is reverted before the commit exists: a keep only commits, and a revert only follows
a decision to discard. `recover(root)` (called under the loop lock by every hook) finishes a
journal a killed hook left behind. AUTORESEARCH_TEST_CRASH_AT=<step> makes the process exit
hard right after that step; only the tests set it.
"""
from __future__ import annotations

import os
import shutil
import stat
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from ..digest import sha256_bytes
from ..atomic import set_aside, write_atomic
from ..gitops import GitError, current_branch, git, head_commit, identity_env, ref_commit, show_blob, trailers, tree_entries
from ..ledger import LedgerRow, append_rows
from ..ledger.durable import write_decision
from . import messages
from .tipcheck import restore_reverted
from .state import STATE_DIR, LastDecision, note_damage, read_state, state_dir, write_state

PENDING = "pending"
JOURNAL = "journal.json"
CRASH_ENV = "AUTORESEARCH_TEST_CRASH_AT"
COMMIT_MARK = "<commit>"                 # in `reply`: replaced by the keep commit's short sha


class LoopError(RuntimeError):
    """The loop cannot apply a decision (git refused, the branch moved). The message says what to do."""


class Conflict(LoopError):
    """The decision can never be applied as written (the run branch or HEAD moved under it): retrying
    cannot help, so the journal is resolved once (`_abandon`) instead of being retried forever."""


class Journal(BaseModel):
    action: Literal["keep", "discard", "crash", "record"]   # record: ledger rows only
    created_at: datetime
    branch: str                          # the run branch the decision belongs to
    branch_from: str | None = None       # commit to start the branch at, when it does not exist yet
    from_name: str | None = None         # what the branch was started from (user branch or commit)
    parent: str                          # the run branch's tip the decision was made against
    run_id: str                          # the deciding run (a keep commit's Autoresearch-Run)
    commit_files: dict[str, str] = {}    # keep: repo path -> snapshot file name in pending/
    revert_files: dict[str, str | None] = {}   # discard/crash: repo path -> sha256 it had when decided
    message: str = ""                    # keep: the commit message
    rows: list[LedgerRow]
    keep_row: int | None = None          # index in rows of the row that gets the keep commit
    metric_name: str
    last_decision: LastDecision | None = None
    reply: dict | None = None            # the Stop hook's answer once applied (COMMIT_MARK for the sha)
    finish_reason: str | None = None     # set: this decision spent the allowance; the loop ends
    abandoned: str | None = None         # set when it could not be applied: why (see _abandon)
    repaired: str | None = None          # set when a commit made on top reverted the keep (tipcheck)

    def commit(self, root: Path) -> str | None:
        """The keep commit, once made: the run branch's tip, or a commit below it (someone committed
        on top), whose parent is `parent` and whose Autoresearch-Run is ours."""
        if self.action != "keep":
            return None
        return _our_commit(root, self, ref_commit(root, f"refs/heads/{self.branch}"))

    def reply_for(self, commit: str | None) -> dict | None:
        if self.reply is None:
            return None
        reply = {k: v.replace(COMMIT_MARK, (commit or "")[:7]) if isinstance(v, str) else v
                 for k, v in self.reply.items()}
        key = "reason" if "reason" in reply else "systemMessage"
        if self.repaired and key in reply:
            reply[key] = f"{self.repaired} {reply[key]}"
        return reply


def pending_dir(root: Path) -> Path:
    return state_dir(root) / PENDING


def crash_point(step: str) -> None:
    """Tests only: die here, like a SIGKILL would, to prove the next call recovers."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


def begin(root: Path, j: Journal, snapshots: dict[str, bytes]) -> None:
    """Write the snapshots, then the journal (atomically, last): the transaction now exists."""
    d = pending_dir(root)
    if d.exists():
        shutil.rmtree(d)
    (d / "files").mkdir(parents=True)
    for name, data in snapshots.items():
        (d / "files" / name).write_bytes(data)
    _write_file(d / JOURNAL, j.model_dump_json(indent=2).encode(), mode=0o644)
    crash_point("journal")


def load(root: Path) -> Journal | None:
    """The pending journal, if any. One that cannot be parsed (truncated, not UTF-8, edited) is
    moved aside whole (.autoresearch/pending.corrupt-<time>) with a notice: the loop goes on from
    the run branch (a keep already committed is found by its trailers) and runs/*/decision.json."""
    path = pending_dir(root) / JOURNAL
    try:
        return Journal.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        if pending_dir(root).exists():          # killed while writing snapshots: nothing began
            shutil.rmtree(pending_dir(root), ignore_errors=True)
        return None
    except (ValidationError, ValueError, OSError):
        aside = set_aside(pending_dir(root))
        note_damage(root, f"the journal of a half-applied decision ({STATE_DIR}/{PENDING}/{JOURNAL}) could not be "
                          f"read and was kept as {STATE_DIR}/{aside.name}; the loop went on from the run branch "
                          f"and runs/*/decision.json (a keep already committed stays kept, an undecided run is "
                          f"decided again). Nothing to do")
        return None


def recover(root: Path) -> Journal | None:
    """Finish the journal a killed hook left, if any. Returns it (None when there was none)."""
    j = load(root)
    if j is not None:
        apply(root, j)
    return j


def apply(root: Path, j: Journal) -> str | None:
    """Run (or finish) the transaction; returns the keep commit's sha, if any. A decision that can
    never be applied (Conflict) is resolved once: see `_abandon`."""
    clear_stale_locks(root)
    try:
        _ensure_branch(root, j)
        crash_point("branch")
        commit = None
        if j.action == "keep":
            commit = _ensure_commit(root, j)
            crash_point("commit")
            if ref_commit(root, f"refs/heads/{j.branch}") == commit:
                _sync_index(root, j, commit)
            else:                              # someone committed on top: from a stale index, it reverted the keep
                j.repaired = restore_reverted(root, j.branch)
            crash_point("index")
        elif j.action in ("discard", "crash"):
            _revert(root, j)
            crash_point("revert")
    except Conflict as e:
        _abandon(root, j, str(e))
        commit = None
    rows = [r.model_copy(update={"commit": commit[:7]}) if i == j.keep_row and commit else r
            for i, r in enumerate(j.rows)]
    append_rows(root, rows, j.metric_name)
    crash_point("ledger")
    for r in rows:
        write_decision(root, r)
    crash_point("decision")
    st = read_state(root)
    if j.last_decision is not None:
        st.last_decision = j.last_decision
        st.idle_stops = 0
    if j.finish_reason and st.finished_at is None:
        st.finished_at, st.finish_reason = j.created_at, j.finish_reason
    if j.from_name:
        st.branches.setdefault(j.branch, j.from_name)
    write_state(root, st)
    crash_point("state")
    shutil.rmtree(pending_dir(root), ignore_errors=True)
    return commit


def _abandon(root: Path, j: Journal, why: str) -> None:
    """The branch or HEAD moved (a human committed or checked out something) before this decision
    was applied. Nothing more is done to git or the work tree; the run is recorded once, as not
    kept, with the reason; the journal is kept in .autoresearch/abandoned/ for the human."""
    note = f"not applied: {why}"[:300]
    j.abandoned = why
    j.rows = [r.model_copy(update={"status": "discard" if r.status == "keep" else r.status,
                                   "note": f"{r.note}; {note}" if r.note else note}) for r in j.rows]
    j.keep_row = None
    j.reply = messages.block(messages.abandoned(j.run_id, j.action, why))
    dest = state_dir(root) / "abandoned" / f"{j.run_id}-{datetime.now():%Y%m%d-%H%M%S}.json"
    write_atomic(dest, j.model_dump_json(indent=2))


# --- stale locks ---------------------------------------------------------------------------

STALE_AGE_S = 120.0                      # without /proc insight: a lock this old has no live owner


def _open_by_anyone(path: Path) -> bool | None:
    """Does any process hold `path` open? (git keeps a lock file open until it commits or rolls
    back.) None when other processes' fds cannot be read."""
    proc = Path("/proc")
    want = str(path)
    seen_other = False
    me = str(os.getpid())
    for d in proc.iterdir() if proc.is_dir() else []:
        if not d.name.isdigit() or d.name == me:
            continue
        try:
            fds = list((d / "fd").iterdir())
        except OSError:
            continue
        seen_other = True
        for fd in fds:
            try:
                if os.readlink(fd) == want:
                    return True
            except OSError:
                continue
    return False if seen_other else None


def git_locks(root: Path) -> list[Path]:
    """Lock files git leaves when killed: index.lock, HEAD.lock, ref locks, our private index's lock."""
    from ..gitops import git_dir
    gd = git_dir(root)
    found = [gd / "index.lock", gd / "HEAD.lock", gd / "packed-refs.lock", pending_dir(root) / "index.tmp.lock"]
    refs = gd / "refs"
    found += list(refs.rglob("*.lock")) if refs.is_dir() else []
    return [p for p in found if p.exists()]


def clear_stale_locks(root: Path) -> list[Path]:
    """Remove git lock files no live process holds (a git killed mid-write leaves one, and every
    later git call refuses). A lock someone holds is left alone. Returns what was removed."""
    removed = []
    for lock in git_locks(root):
        held = _open_by_anyone(lock)
        try:
            age = datetime.now().timestamp() - lock.stat().st_mtime
        except OSError:
            continue
        if held is False or (held is None and age > STALE_AGE_S):
            try:
                lock.unlink()
                removed.append(lock)
            except OSError:
                pass
    return removed


# --- steps ---------------------------------------------------------------------------------

def _ensure_branch(root: Path, j: Journal) -> None:
    if current_branch(root) == j.branch:
        return
    ref = f"refs/heads/{j.branch}"
    head = head_commit(root)
    tip = ref_commit(root, ref)
    if tip is None:
        if head != j.branch_from:
            raise Conflict(f"HEAD moved (to {head}) before the run branch {j.branch} could be started "
                            f"from {j.branch_from}; check out {j.branch_from} again")
        git(root, "update-ref", "-m", "autoresearch: start run branch", ref, head, "")
        tip = head
    if head != tip:
        raise Conflict(f"HEAD ({head and head[:7]}) is not at the run branch {j.branch} ({tip[:7]}): "
                        f"`git checkout {j.branch}` to continue that run")
    git(root, "symbolic-ref", "-m", "autoresearch: switch to run branch", "HEAD", ref)


def _ensure_commit(root: Path, j: Journal) -> str:
    ref = f"refs/heads/{j.branch}"
    tip = ref_commit(root, ref)
    if tip != j.parent:
        if (ours := _our_commit(root, j, tip)) is not None:
            return ours                        # made; maybe someone committed on top since (apply says so)
        raise Conflict(f"the run branch {j.branch} moved from {j.parent[:7]} to {tip and tip[:7]} "
                        f"while run {j.run_id} was being decided; nothing was committed or reverted")
    files = pending_dir(root) / "files"
    tmp_index = pending_dir(root) / "index.tmp"
    env = {"GIT_INDEX_FILE": str(tmp_index)}
    git(root, "read-tree", j.parent, env=env)
    paths = list(j.commit_files)
    blobs = git(root, "hash-object", "-w", "--no-filters", "--",
                *[str(files / j.commit_files[p]) for p in paths]).stdout.split()
    modes = _modes(root, j.parent, paths)
    args = [a for p, b in zip(paths, blobs) for a in ("--cacheinfo", f"{modes.get(p, '100644')},{b},{p}")]
    git(root, "update-index", "--add", *args, env=env)
    tree = git(root, "write-tree", env=env).stdout.strip()
    commit = git(root, "commit-tree", tree, "-p", j.parent, "-F", "-", input=j.message,
                 env=identity_env(root)).stdout.strip()
    git(root, "update-ref", "-m", f"autoresearch: keep run {j.run_id}", ref, commit, j.parent)
    return commit


def _our_commit(root: Path, j: Journal, tip: str | None) -> str | None:
    """Our keep commit when the branch tip is it or descends from it (first parents), else None."""
    if not tip or tip == j.parent:
        return None
    if _is_our_commit(root, tip, j):
        return tip
    p = git(root, "rev-list", "--first-parent", "--max-count=200", f"{j.parent}..{tip}", check=False)
    for c in p.stdout.split()[1:]:
        if _is_our_commit(root, c, j):
            return c
    return None


def _is_our_commit(root: Path, commit: str, j: Journal) -> bool:
    p = git(root, "log", "-1", "--format=%P%x00%B", commit)
    parents, _, msg = p.stdout.partition("\x00")
    return parents.split()[:1] == [j.parent] and trailers(msg).get("Autoresearch-Run") == j.run_id


def _sync_index(root: Path, j: Journal, commit: str) -> None:
    """Point the real index at the committed blobs, so `git status` shows only newer edits."""
    entries = tree_entries(root, commit, list(j.commit_files))
    args = [a for path, (mode, blob) in entries.items() for a in ("--cacheinfo", f"{mode},{blob},{path}")]
    if args:
        git(root, "update-index", "--add", *args)


def _revert(root: Path, j: Journal) -> None:
    for path, decided_sha in j.revert_files.items():
        want = show_blob(root, j.parent, path)
        if want is None:
            continue                           # not in the branch: nothing to go back to
        target = Path(root) / path
        try:
            cur = target.read_bytes()
        except FileNotFoundError:
            cur = None
        if cur == want:
            continue
        if cur is not None and sha256_bytes(cur) != decided_sha:
            continue                           # edited again since the decision: that is newer work, keep it
        _write_file(target, want, mode=_file_mode(target))


def _modes(root: Path, commit: str, paths: list[str]) -> dict[str, str]:
    return {p: m if m in ("100644", "100755") else "100644" for p, (m, _) in tree_entries(root, commit, paths).items()}


def _file_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o644


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomic replace that keeps the file's permission bits."""
    write_atomic(path, data, mode)


__all__ = ["Journal", "LoopError", "Conflict", "clear_stale_locks", "GitError", "begin", "apply", "recover", "load", "pending_dir", "crash_point"]
