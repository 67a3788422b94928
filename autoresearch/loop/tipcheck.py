"""The run branch's tip must hold the code of its last keep. A keep moves the branch first and
syncs git's index second; a hook killed in between leaves the index at the code before the keep.
A commit made from that stale index (`git add X; git commit`) puts the files the keep changed
back to their old content on the tip: the ledger says "kept" while the branch runs the old code,
and later runs of the old code would be taken for re-measurements of the best.

`restore_reverted` detects exactly that shape -- after our last keep commit C (first parents),
the tip holds C's parent's version of a file C changed -- and restores C's version in a commit on
top (the other commit's own changes stay), fixes the index entries that are still stale, and
says so. A file changed to anything else is a human's deliberate edit and is left alone.
`sync_stale_index` fixes the index alone when nobody committed (the tip is C).
"""
from __future__ import annotations

from pathlib import Path

from ..gitops import current_branch, git, identity_env, ref_commit, trailers, tree_entries
from .state import state_dir

RUN = "Autoresearch-Run"
SCAN = 200                                # first-parent commits looked at below the tip


def last_keep(root: Path, branch: str, tip: str) -> tuple[str, str, str] | None:
    """(commit, run id, experiment) of the newest keep commit of `branch` at or below `tip`."""
    p = git(root, "log", "--first-parent", f"--max-count={SCAN}", "--format=%H%x00%B%x01", tip, "--", check=False)
    for rec in p.stdout.split("\x01"):
        sha, _, msg = rec.strip().partition("\x00")
        t = trailers(msg)
        if sha and t.get(RUN) and t.get("Autoresearch-Branch") == branch:
            return sha, t[RUN], t.get("Autoresearch-Experiment", "?")
    return None


def _index(root: Path, paths: list[str]) -> dict[str, str]:
    """path -> blob in git's index (stage 0)."""
    out = {}
    for line in git(root, "ls-files", "-s", "-z", "--", *paths, check=False).stdout.split("\0"):
        meta, _, path = line.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[2] == "0":
            out[path] = parts[1]
    return out


def _changed(root: Path, commit: str) -> list[str]:
    return [f for f in git(root, "diff-tree", "--no-commit-id", "-r", "-z", "--name-only", "--no-renames",
                           f"{commit}^", commit, check=False).stdout.split("\0") if f]


def sync_stale_index(root: Path, commit: str, paths: list[str] | None = None) -> list[str]:
    """Index entries of the files `commit` changed that still hold its parent's blob get the
    commit's (the rest -- newer staging by a human -- is left alone). Returns the paths fixed."""
    paths = _changed(root, commit) if paths is None else paths
    now, before = tree_entries(root, commit, paths), tree_entries(root, f"{commit}^", paths)
    idx = _index(root, paths)
    stale = [p for p in paths if p in now and p in before and idx.get(p) == before[p][1] != now[p][1]]
    args = [a for p in stale for a in ("--cacheinfo", f"{now[p][0]},{now[p][1]},{p}")]
    if args:
        git(root, "update-index", *args)
    return stale


def restore_reverted(root: Path, branch: str | None = None) -> str | None:
    """Put back the code of the branch's last keep when a later commit (from a stale index) reverted
    it; returns what was done, in words, or None when the tip is fine (the index is synced too)."""
    branch = branch or current_branch(root)
    if not branch or current_branch(root) != branch:
        return None
    tip = ref_commit(root, f"refs/heads/{branch}")
    keep = last_keep(root, branch, tip) if tip else None
    if keep is None:
        return None
    c, run_id, exp = keep
    if c == tip:
        sync_stale_index(root, c)
        return None
    paths = _changed(root, c)
    kept, before, now = tree_entries(root, c, paths), tree_entries(root, f"{c}^", paths), tree_entries(root, tip, paths)
    reverted = [p for p in paths if p in kept and p in before and now.get(p) == before[p] != kept[p]]
    if not reverted:
        return None
    by = git(root, "log", "--first-parent", "--format=%h", f"{c}..{tip}", "--", *reverted).stdout.split()
    culprit = by[-1] if by else tip[:7]
    msg = (f"autoresearch: restore the code kept by run {run_id} (#{exp})\n\n"
           f"Commit {culprit} (not made by autoresearch) put {', '.join(reverted)} back to the version before "
           f"keep #{exp}: it was made from a git index left stale by an interrupted keep. Its other changes stay.\n")
    tmp = state_dir(root) / "index.restore"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    env = {"GIT_INDEX_FILE": str(tmp)}
    try:
        git(root, "read-tree", tip, env=env)
        git(root, "update-index", *[a for p in reverted for a in ("--cacheinfo", f"{kept[p][0]},{kept[p][1]},{p}")],
            env=env)
        tree = git(root, "write-tree", env=env).stdout.strip()
    finally:
        tmp.unlink(missing_ok=True)
    new = git(root, "commit-tree", tree, "-p", tip, "-F", "-", input=msg, env=identity_env(root)).stdout.strip()
    git(root, "update-ref", "-m", f"autoresearch: restore keep of run {run_id}", f"refs/heads/{branch}", new, tip)
    idx = _index(root, reverted)
    stale = [p for p in reverted if idx.get(p) == before[p][1]]
    if stale:
        git(root, "update-index", *[a for p in stale for a in ("--cacheinfo", f"{kept[p][0]},{kept[p][1]},{p}")])
    return (f"autoresearch: commit {culprit} (made by someone else from a stale git index, after an interrupted "
            f"keep) had put {', '.join(reverted)} back to the code before keep #{exp} (run {run_id}); the kept "
            f"code is restored on top ({new[:7]}) and that commit's other changes stay. Runs of the old code are "
            f"not measurements of the best.")
