"""editable: in program.md: which project files the agent may change. One matcher for all.

The guard (may the agent edit this path?) caches editable_regex()'s text; the runner and the loop
(which files form a run's snapshot) call Program.editable_files, built on match_files. Three forms:
`model.py` a file (may not exist yet: a snapshot records it as absent); `src/` every file below a
folder; `config/*.py` a glob (* ? [abc] within one folder, ** any number of folders). The harness's
own files are never editable, whatever a pattern matches (guard/paths.py keeps the same two sets for
its hot path; a test holds them equal).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

NEVER_EDITABLE = frozenset({"program.md", "prepare.py", "run.sh", "results.tsv"})
NEVER_EDITABLE_DIRS = frozenset({".claude", ".claude-plugin", "hooks", ".git", ".autoresearch", "autoresearch",
                                 "container", "runs", ".venv"})
_GLOB, _WALK_SKIP = re.compile(r"[*?\[]"), {"__pycache__", "node_modules", ".svn", ".hg", ".jj"}


def never_editable(rel: str, frozen: "list[str] | tuple[str, ...]" = ()) -> bool:
    """The harness's own files and the frozen eval script's (`frozen`: program.md eval.files), case-
    insensitive: a case-insensitive file system cannot spell around it."""
    parts = rel.lower().split("/")
    low = "/".join(parts)
    return low in NEVER_EDITABLE or parts[0] in NEVER_EDITABLE_DIRS or any(low == f.lower() for f in frozen)


def frozen_problem(pattern: str, frozen: list[str]) -> str | None:
    """Why an editable pattern may not be used alongside eval.files (None: it may): it covers one of
    the frozen eval script's files, which must stay the human's. The one place for this rule (the
    guard's policy carries `frozen` and refuses edits to them too)."""
    rx = re.compile(pattern_regex(pattern), re.IGNORECASE)
    hit = [f for f in frozen if rx.fullmatch(f)]
    if hit:
        return (f"{pattern!r} covers {', '.join(hit)}, the frozen evaluation script (eval.files), which the agent "
                "may never edit: narrow the pattern or move the eval script out of it")
    return None


def _segment_re(seg: str) -> str:
    out, i = [], 0
    while i < len(seg):
        c, close = seg[i], seg.find("]", i + 2) if seg[i] == "[" else -1
        if c in "*?":
            out.append("[^/]*" if c == "*" else "[^/]")
        elif close > 0:
            body = seg[i + 1:close]
            neg = body[:1] in ("!", "^")
            out.append(("[^/" if neg else "(?!/)[") + body[neg:].replace("\\", "\\\\") + "]")
            i = close
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def pattern_regex(pattern: str) -> str:
    """The regex (for fullmatch on a project-relative path with '/') of one editable pattern."""
    segs = pattern.rstrip("/").split("/")
    out = [(".*" if k == len(segs) - 1 else "(?:.*/)?") if seg == "**" else
           _segment_re(seg) + ("" if k == len(segs) - 1 else "/") for k, seg in enumerate(segs)]
    return "".join(out) + ("/.+" if pattern.endswith("/") else "")


def editable_regex(patterns: list[str]) -> str:
    """One regex for a list of patterns; never matches when the list is empty."""
    return "(?:" + "|".join(f"(?:{pattern_regex(p)})" for p in patterns) + ")" if patterns else "(?!)"


def is_literal(pattern: str) -> bool:
    """A plain file name (no glob character, not a folder)."""
    return not pattern.endswith("/") and not _GLOB.search(pattern)


def pattern_problem(pattern: str) -> str | None:
    """Why an editable pattern cannot be used (None: it can); checked when program.md loads."""
    parts = pattern.rstrip("/").split("/")
    if not pattern or pattern.startswith(("/", "~")) or "\\" in pattern or any(p in ("", ".", "..") for p in parts):
        return (f"{pattern!r} must be a path relative to the project (model.py, src/, config/*.py), "
                "without '..', '.', '//' or a leading '/'")
    head = "/".join(parts[:next((i for i, p in enumerate(parts) if _GLOB.search(p)), len(parts))])
    if head and never_editable(head):
        return f"{pattern!r} names the harness's own files ({head}), which are never editable: remove it"
    try:
        re.compile(pattern_regex(pattern))
    except re.error as e:
        return f"{pattern!r} is not a valid glob ({e})"
    return None


def match_files(root: Path, patterns: list[str], frozen: "list[str] | tuple[str, ...]" = ()) -> dict[str, list[str]]:
    """pattern -> the regular files below root it matches (sorted; never the harness's own nor the
    frozen eval files; a literal file is listed even when it does not exist yet). Symbolic links are
    not followed."""
    found: dict[str, list[str]] = {p: [p] if is_literal(p) and not never_editable(p, frozen) else []
                                   for p in patterns}
    regexes = {p: re.compile(pattern_regex(p)) for p in patterns if not is_literal(p)}
    for dirpath, dirnames, filenames in os.walk(root) if regexes else ():
        rel_dir = "" if dirpath == str(root) else os.path.relpath(dirpath, root) + "/"
        dirnames[:] = sorted(d for d in dirnames if d not in _WALK_SKIP and not never_editable(rel_dir + d))
        for name in filenames:
            full, rel = os.path.join(dirpath, name), rel_dir + name
            if never_editable(rel, frozen) or os.path.islink(full) or not os.path.isfile(full):
                continue
            for p in [p for p, rx in regexes.items() if rx.fullmatch(rel)]:
                found[p].append(rel)
    return {p: sorted(fs) for p, fs in found.items()}
