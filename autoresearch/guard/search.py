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
SUGGEST_WALK = 600             # entries a denial's suggestion vets in all (readable_parts)


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
    if (inside := _holds_hidden(ctx, path, top)) is not None:
        return f"{inside}: search a folder that does not"
    seen = 0
    stack = [top]
    while stack:
        dirpath = stack.pop()
        entries = _entries(dirpath)
        seen += len(entries)
        if seen > WALK_LIMIT:
            return f"{path} is too large to vet: search a smaller folder"
        for e in entries:
            if e.name in WALK_SKIP:             # VCS folders (a worktree's .git file too), as the search skips them
                continue
            full = os.path.join(dirpath, e.name)
            rel = os.path.relpath(full, top)
            if (kind := _kind(e)) is None:
                continue
            is_link, is_dir, is_file = kind
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


def reach_problem(ctx: Context, path: str, follow: bool = False, names_only: bool = False,
                  depth: int | None = None) -> str | None:
    """Why a Bash walk below the folder `path` may not run (None: it may); _reach says how."""
    return _reach(ctx, path, follow, names_only, depth, WALK_LIMIT, None)


def _reach(ctx: Context, path: str, follow: bool, names_only: bool, depth: int | None, limit: int,
           spent: list | None) -> str | None:
    """Why a Bash walk below the folder `path` may not run (None: it may): `grep -r`/`rg` (read
    every file below), `grep -R` (and follow every link), `find`/`ls -R`/`rg --files` (list every
    name below, to `depth` levels). The rule: the walk's whole reach must be readable. Unlike the
    Grep tool, which skips VCS folders, these programs skip nothing (rg's ignore files can
    whitelist anything back), so nothing is skipped here either; their own filters (--include,
    -name, -g) never count in the walk's favour. So a walk that would enter `.git`, a run's out/,
    a folder agent code writes, held-out data, or a folder holding credentials is refused as a
    whole, whatever is there now; so is one that would read a FIFO or device, or (following
    links) a link out of bounds. A listing may name a hidden entry (as `ls` does) but not enter it."""
    top = os.path.realpath(ctx.abspath(path))
    if not os.path.isdir(top):
        return None
    if (inside := _holds_hidden(ctx, path, top)) is not None:
        return inside
    seen = 0
    visited = {top}
    stack = [(top, 0)]
    while stack:
        dirpath, level = stack.pop()
        if depth is not None and level >= depth:
            continue
        entries = _entries(dirpath)
        seen += len(entries)
        if spent is not None:
            spent[0] += len(entries)
        if seen > limit:
            return f"{path} holds more than {limit} entries: too large to vet"
        for e in entries:
            full = dirpath + "/" + e.name
            if (kind := _kind(e)) is None:
                continue
            is_link, is_dir, is_file = kind
            if is_link and not follow:          # not followed inside the walk: not read, only named
                continue
            if names_only and not is_dir and not is_link:
                continue                        # a listing names a file; it reads nothing
            hidden = name_problem(ctx, full)
            if is_link:
                if read_problem(ctx, full):
                    return f"{path} contains {_rel(full, top)}, a link out of bounds (-R follows it)"
                real = os.path.realpath(full)
                if os.path.isdir(real) and real not in visited:
                    visited.add(real)
                    stack.append((real, level + 1))
                continue
            if is_dir:
                if hidden or _agent_written_dir(ctx, full):
                    if depth is None or level + 1 < depth or not names_only:
                        return f"{path} contains {_rel(full, top)}, which {_tree_why(hidden or 'is off limits')}"
                    continue
                stack.append((full, level + 1))
                continue
            if hidden:
                return f"{path} contains {_rel(full, top)}, which {_tree_why(hidden)}"
            if not is_file:
                return f"{path} contains {_rel(full, top)}, which is not a regular file (a FIFO, socket or device)"
    return None


def _entries(dirpath: str) -> list:
    """The folder's entries; none when it cannot be listed (the walk then does not enter it)."""
    try:
        with os.scandir(dirpath) as it:
            return list(it)
    except OSError:
        return []


def _kind(e: os.DirEntry) -> tuple[bool, bool, bool] | None:
    """(a link, a folder, a regular file) of an entry, links not followed; None when it cannot be told."""
    try:
        link = e.is_symlink()
        return link, not link and e.is_dir(follow_symlinks=False), not link and e.is_file(follow_symlinks=False)
    except OSError:
        return None


def _rel(full: str, top: str) -> str:
    return full[len(top) + 1:] if full.startswith(top + "/") else full


def readable_parts(ctx: Context, path: str, limit: int = 24, **walk) -> list[str]:
    """The entries of the folder `path` a walk may reach whole (for a denial's suggestion), spelled
    below `path` as the agent wrote it; at most `limit`. A courtesy on the denied path, so it is
    cheap: files first, then folders smallest first, SUGGEST_WALK entries vetted in all (a folder
    beyond that is left out), dot-names last."""
    spent = [0]
    top = ctx.abspath(path)
    try:
        names = os.listdir(top)
    except OSError:
        return []

    def order(name: str):
        full = os.path.join(top, name)
        if not os.path.isdir(full) or os.path.islink(full):
            return (name.startswith("."), 0, name)
        try:
            return (name.startswith("."), 1 + len(os.listdir(full)), name)
        except OSError:
            return (True, 0, name)

    out = []
    for name in sorted(names, key=order):
        full = os.path.join(top, name)
        if name_problem(ctx, full):
            continue
        if os.path.islink(full):                # the folder itself passed the Read policy: only a link
            if os.path.isdir(full) or read_problem(ctx, full):      # needs resolving (and one to a
                continue                                              # folder is left out)
        elif not (os.path.isfile(full) or os.path.isdir(full)):
            continue                            # a FIFO, socket or device
        if os.path.isdir(full) and (spent[0] >= SUGGEST_WALK or _reach(
                ctx, full, walk.get("follow", False), walk.get("names_only", False), walk.get("depth"),
                SUGGEST_WALK - spent[0], spent)):
            continue
        out.append(name if path in (".", "./") else f"{path.rstrip('/')}/{name}")
        if len(out) >= limit:
            break
    return sorted(out, key=lambda n: (n.rsplit("/", 1)[-1].startswith("."), n))


def _holds_hidden(ctx, path: str, top: str) -> str | None:
    """Why a walk from `top` would reach held-out data or a folder agent code writes (None: it would not)."""
    for held in ctx.heldout_roots():
        if under(os.path.realpath(held), top):
            return f"{path} contains held-out data ({held})"
    for w in ctx.written:
        if under(w, top):
            return f"{path} contains {w}, a folder agent code writes"
    return None


def tracked_problem(ctx, specs: list[tuple[str, bool]], typed: str = "git grep ...",
                    limit: int = WALK_LIMIT) -> str | None:
    """Why `git grep` over these pathspecs may not run (None: it may). It reads the work tree's
    tracked files only (never untracked or ignored ones, never through a link), so its reach is
    exactly what `git ls-files` lists from the same folder with the same pathspecs (no magic, no
    wildcard: the language has none): each of those is judged by name, and one that is a folder
    (a submodule, which submodule.recurse would search) is refused. A pathspec given before `--`
    must exist, or git would take it for a revision and search that commit's tree instead."""
    import subprocess
    for path, before_dashdash in specs:
        if before_dashdash and not os.path.lexists(ctx.abspath(path)):
            return (f"{path} is not a file or folder here, so git would read it as a revision: git grep searches "
                    f"the work tree's tracked files (name a path, or after --); a commit's file: git show REV:PATH")
    argv = ["git", "-c", "core.fsmonitor=false", "--no-optional-locks", "ls-files", "-z", "--",
            *[p for p, _ in specs]]
    try:          # git's own reading of the pathspecs; ls-files runs no hook, filter or fsmonitor
        p = subprocess.run(argv, cwd=ctx.cwd, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return f"git ls-files could not list what git grep would read ({e}), so it is denied"
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        return f"git grep here is denied: git ls-files says {err[-1] if err else f'exit {p.returncode}'}"
    names = [n for n in p.stdout.decode(errors="surrogateescape").split("\0") if n]
    if len(names) > limit:
        return f"git grep would read {len(names)} files: too many to vet; name a folder (git grep ... -- FOLDER)"
    bad: list[str] = []
    for n in names:
        full = os.path.normpath(os.path.join(ctx.cwd, n))
        why = name_problem(ctx, full)
        if why is None and os.path.isdir(full) and not os.path.islink(full):
            why = "is a submodule: it is not searched"
        if why:
            if not bad:
                first = f"git grep would read {n}, which {_tree_why(why) if 'submodule' not in why else why}"
            bad.append(n)
    if not bad:
        return None
    tops = sorted({n.split("/", 1)[0] for n in names} - {b.split("/", 1)[0] for b in bad})
    if specs or not tops or len(tops) > 24:
        return f"{first}: search files and folders that hold nothing off limits (git grep ... -- PATH)"
    return f"{first}; search the parts you may read: `{typed} -- {' '.join(tops)}`"
