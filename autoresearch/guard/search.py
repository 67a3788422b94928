"""Searches (Grep, Glob): judged by every entry they could reach below their folder.

A glob is compiled to pieces that match at least every relative path it can match (ripgrep's
rules: a glob without `/` matches a base name at any depth). The walk judges each entry by name
(paths.name_problem); it never enters a folder agent code writes (a run's out/, a host folder
TRAIN writes): there it asks only whether the pattern COULD match something below, since what is
there now may change before the search runs.
"""
from __future__ import annotations

import os

from .paths import RUN_AGENT_WRITTEN, Context, name_problem, project_rel, read_problem, under

WALK_SKIP = {".git", ".svn", ".hg", ".bzr", ".jj", ".sl",   # Claude Code's searches skip VCS folders
             ".venv", "node_modules", "__pycache__"}
WALK_LIMIT = 20000


def glob_tokens(pattern: str) -> list[str]:
    """A glob as regex pieces that match (case-insensitively) at least every relative path it can
    match: * ? [..] {a,b} and **. Kept as pieces so reaches_below can ask what a prefix allows."""
    import re
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if i < n and pattern[i] == "/":
                out.append("/?")        # `**/x` also matches `x`
                i += 1
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c in "[{":
            out.append(".*")            # a class or alternation: any text (a superset)
            close = pattern.find("]" if c == "[" else "}", i + 1)
            i = n if close < 0 else close
        else:
            out.append(re.escape(c))
        i += 1
    return out


class GlobPattern:
    """A glob, compiled: `fullmatch` (a regex matching at least every relative path it can match)
    and its pieces (None for a glob without `/`, which matches a base name at any depth)."""
    __slots__ = ("fullmatch", "tokens")

    def __init__(self, pattern: str):
        import re
        tokens = glob_tokens(pattern)
        self.fullmatch = re.compile("".join(tokens), re.IGNORECASE | re.DOTALL).fullmatch
        self.tokens = tokens if "/" in pattern.rstrip("/") else None   # `out/`: a name at any depth too


def glob_regex(pattern: str) -> GlobPattern:
    return GlobPattern(pattern)


def reaches_below(pattern, rel: str) -> bool:
    """Could the glob match some path below the folder `rel` (relative to the search root)? A glob
    without `/` matches a base name at any depth (ripgrep's rule): always. Else the glob's pieces
    are run over `rel/` as an automaton: any live state can be completed by some name below."""
    import re
    if pattern is None:
        return True
    tokens = getattr(pattern, "tokens", None)
    if tokens is None:
        return True
    pieces = [re.compile(t, re.IGNORECASE | re.DOTALL) for t in tokens]
    text = rel.rstrip("/") + "/"

    def step(states: set[int], ch: str | None) -> set[int]:
        """States after reading `ch` (None: the closure only: optional and starred pieces skipped)."""
        out, todo = set(), list(states)
        while todo:                             # closure: pieces that may match nothing
            k = todo.pop()
            if k in out:
                continue
            out.add(k)
            if k < len(tokens) and pieces[k].fullmatch(""):
                todo.append(k + 1)
        if ch is None:
            return out
        nxt = set()
        for k in out:
            if k >= len(tokens):
                continue
            t = tokens[k]
            if t in (".*", "[^/]*"):
                if pieces[k].fullmatch(ch):
                    nxt.add(k)                  # a star stays where it is
            elif pieces[k].fullmatch(ch):
                nxt.add(k + 1)
        return step(nxt, None) if nxt else set()

    states = step({0}, None)
    for ch in text:
        states = step(states, ch)
        if not states:
            return False
    return True


def tree_problem(ctx: Context, path: str, pattern=None) -> str | None:
    """Why a search below the folder `path` may not run: some entry it could reach (matching
    `pattern`, a glob_regex, by relative path or by base name, as ripgrep's globs do) is off limits,
    or a link leads out of bounds, or it is not a regular file (None: it may). A folder agent code
    writes is not entered: it is judged by whether the pattern could match anything below it, never
    by what agent code has put there (which may change before the search runs). VCS folders are
    skipped, as Claude Code's search does."""
    top = os.path.realpath(ctx.abspath(path))
    if not os.path.isdir(top):
        return None
    for held in ctx.heldout_roots():
        if under(os.path.realpath(held), top):
            return f"{path} contains held-out data ({held}): search a folder that does not"
    for w in ctx.written:
        if under(w, top):
            return f"{path} contains {w}, a folder agent code writes: search a folder that does not"
    seen = 0
    stack = [top]
    while stack:
        dirpath = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError:
            continue
        seen += len(entries)
        if seen > WALK_LIMIT:
            return f"{path} is too large to vet: search a smaller folder"
        for e in entries:
            if e.name in WALK_SKIP:             # VCS folders (a worktree's .git file too), as the search skips them
                continue
            full = os.path.join(dirpath, e.name)
            rel = os.path.relpath(full, top)
            try:
                is_link = e.is_symlink()
                is_dir = not is_link and e.is_dir(follow_symlinks=False)
                is_file = not is_link and e.is_file(follow_symlinks=False)
            except OSError:
                continue
            hidden = name_problem(ctx, full)
            matched = pattern is None or pattern.fullmatch(rel) or pattern.fullmatch(e.name)
            if is_dir:
                if hidden and _agent_written_dir(ctx, full):     # judged by what the pattern could reach
                    if matched or reaches_below(pattern, rel):
                        return f"{path} contains {rel}, which {_tree_why(hidden)}: search a file or folder that does not"
                    continue
                if hidden and matched:
                    return f"{path} contains {rel}, which {_tree_why(hidden)}: search a file or folder that does not"
                stack.append(full)
                continue
            if not matched:
                continue
            if hidden:
                why = _tree_why(hidden)
            elif is_link:
                why = "is a link out of bounds" if read_problem(ctx, full) else None
            elif not is_file:
                why = "is not a regular file (a FIFO, socket or device)"
            else:
                why = None
            if why:
                return f"{path} contains {rel}, which {why}: search a file or folder that does not"
    return None


def _agent_written_dir(ctx: Context, full: str) -> bool:
    """A folder agent code writes while a run goes: runs/NNNN/<RUN_AGENT_WRITTEN>, or a host folder
    TRAIN writes (anything below one is hidden by name too)."""
    if ctx.agent_written(full):
        return True
    rel = project_rel(ctx, full)
    parts = rel.split("/") if rel else []
    return len(parts) == 3 and parts[0].lower() == "runs" and parts[2].lower() in RUN_AGENT_WRITTEN


def _tree_why(hidden: str) -> str:
    if "credentials" in hidden:
        return "may hold credentials"
    if "eval.log" in hidden:
        return "is an EVAL log for humans only, off limits (runs/NNNN/train.log has the evaluator's result)"
    return "is off limits"
