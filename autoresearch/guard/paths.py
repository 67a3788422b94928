"""The path policy: what a tool call may read, search or edit, judged by path.

- Read/NotebookRead/LS/Glob/Grep: by real path, the project and the interpreter's libraries,
  except held-out data (the test split, the raw downloads), anything that may hold credentials,
  `.git/` internals, any run's `out/` folder and `eval.log` (written by agent code while it saw
  evaluation inputs). A search is judged by every entry it could reach (tree_problem).
- Edit/Write/MultiEdit/NotebookEdit: only the editable set (program.md's files, folders and globs,
  matched by program.editable_regex: the runner's matcher), as existing regular files inside the
  project reached without `..`, symlinks or extra hard links; the harness's own files are never
  editable, whatever program.md says.

Every check is `*_problem(...) -> reason | None` (None: allowed).
"""
from __future__ import annotations

import os
import sys

from .policy import Policy

# The harness's own files: never editable, even if a program.md pattern matches them. (Only names
# the harness owns in every project, including a legacy repo set up by `autoresearch init`. The
# same sets as program.NEVER_EDITABLE*, kept here for the hot path; a test holds them equal.)
NEVER_EDITABLE = {"program.md", "prepare.py", "run.sh", "results.tsv"}
NEVER_EDITABLE_DIRS = {".claude", ".claude-plugin", "hooks", ".git", ".autoresearch", "autoresearch",
                       "container", "runs", ".venv"}

# Credentials: directories and file names that are off limits anywhere.
SECRET_DIRS = {".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", ".password-store", ".secrets"}
SECRET_PAIRS = {(".config", "gcloud"), (".claude", ".credentials.json"), (".config", "gh"),
                (".git", "config"),                 # remote URLs can carry tokens
                (".config", "autoresearch")}        # the metrics signing key
SECRET_FILES = {".netrc", "_netrc", ".git-credentials", ".pypirc", ".npmrc", ".pgpass", ".claude.json",
                ".credentials.json", "credentials.json", ".htpasswd", "secrets.json", "secrets.yaml"}
SECRET_PREFIXES = (".env", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519")
SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".kdbx", ".keystore", ".jks")
WALK_SKIP = {".git", ".svn", ".hg", ".bzr", ".jj", ".sl",   # Claude Code's searches skip VCS folders
             ".venv", "node_modules", "__pycache__"}
WALK_LIMIT = 20000


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


class Context:
    """Everything a decision needs about the world, computed once per call."""

    def __init__(self, root: str, policy: Policy, cwd: str | None = None, env=None,
                 transcript: str | None = None):
        env = os.environ if env is None else env
        self.root = os.path.abspath(root)
        self.root_real = os.path.realpath(root)
        self.policy = policy
        self.cwd = cwd if cwd and os.path.isabs(cwd) else self.root
        self.home = env.get("HOME") or os.path.expanduser("~")
        self.readable = [self.root_real, os.path.realpath(os.path.dirname(os.__file__))]
        self.readable += [os.path.realpath(p) for p in sys.path
                          if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
        if transcript and isinstance(transcript, str):  # Claude Code's own session files (tool outputs)
            folder = os.path.realpath(os.path.dirname(transcript))
            config = env.get("CLAUDE_CONFIG_DIR") or os.path.join(self.home, ".claude")
            if under(folder, os.path.join(os.path.realpath(config), "projects")):
                self.readable.append(folder)
        cache = env.get("AUTORESEARCH_CACHE") or os.path.join(self.home, ".cache", "autoresearch")
        self.caches = {os.path.abspath(cache), os.path.realpath(cache)}
        data = env.get("AUTORESEARCH_DATA")
        self.data_tests = {os.path.join(d, "test") for d in
                           ((os.path.abspath(data), os.path.realpath(data)) if data else ())}

    def abspath(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        return os.path.normpath(os.path.join(self.cwd, path))

    def heldout(self, path: str) -> bool:
        """The test split (`<cache>/data/<dataset>/test`, `$AUTORESEARCH_DATA/test`), the raw downloads,
        and the EVAL logs (what the model printed while it was shown held-out windows)."""
        low = path.lower()                  # case-insensitive file systems (macOS) included
        if is_eval_log(low):
            return True
        for cache in self.caches:
            if under(low, cache.lower()):
                rest = low[len(cache):].strip("/").split("/")
                if rest[0] == "downloads" or (rest[0] == "data" and len(rest) >= 3 and rest[2] == "test"):
                    return True
        return any(under(low, t.lower()) for t in self.data_tests)

    def heldout_roots(self) -> list[str]:
        """The held-out folders that exist, for checking what a recursive search would reach."""
        roots = [t for t in self.data_tests if os.path.isdir(t)]
        for cache in self.caches:
            roots.append(os.path.join(cache, "downloads"))
            try:
                roots += [os.path.join(cache, "data", d, "test") for d in os.listdir(os.path.join(cache, "data"))]
            except OSError:
                pass
        return [r for r in roots if os.path.exists(r)]


def is_eval_log(path: str) -> bool:
    """runs/NNNN/eval.log and .autoresearch/final-*.eval.log: human-only (they may quote held-out bytes)."""
    name = path.lower().rstrip("/").rsplit("/", 1)[-1]
    return name == "eval.log" or name.endswith(".eval.log")


def is_secret(path: str) -> bool:
    parts = path.lower().split("/")
    if any(p in SECRET_DIRS for p in parts) or any(pair in SECRET_PAIRS for pair in zip(parts, parts[1:])):
        return True
    name = parts[-1]
    return name in SECRET_FILES or name.startswith(SECRET_PREFIXES) or name.endswith(SECRET_SUFFIXES)


def off_limits(rel: str) -> str | None:
    """Why a project-relative path is off limits although it is inside the project (None: it is not).
    Case-insensitive, so a case-insensitive file system cannot spell its way around it."""
    parts = rel.lower().split("/")
    if ".git" in parts:
        return "git internals are off limits: use git status, git diff, git log or git show"
    if len(parts) >= 3 and parts[0] == "runs" and parts[2] == "out":
        return "a run's out/ folder is written by agent code: it is off limits (read runs/NNNN/metrics.json or train.log)"
    if len(parts) == 3 and parts[0] == "runs" and parts[2] == "eval.log":
        return "eval.log is for humans only: read runs/NNNN/metrics.json or train.log"
    return None


def _rel(ctx: Context, path: str) -> str | None:
    for root in (ctx.root, ctx.root_real):
        if under(path, root):
            return path[len(root):].strip("/")
    return None


def read_problem(ctx: Context, path, what: str = "read") -> str | None:
    """Why `path` may not be read (None: it may). Judged lexically and by real path (links
    and `..` resolved as the kernel does), so neither spelling can reach what the other hides."""
    if not isinstance(path, str) or not path:
        return "no path given"
    if "\x00" in path:
        return "NUL bytes are not allowed in paths"
    joined = os.path.join(ctx.cwd, ctx.abspath(path) if path.startswith("~") else path)
    p = os.path.normpath(joined)
    reals = {os.path.realpath(p), os.path.realpath(joined)}
    for q in (p, *reals):
        if is_secret(q):
            return f"{path} may hold credentials: it is off limits"
        if is_eval_log(q):
            return (f"{path}: eval.log is for humans only (it may quote held-out bytes): "
                    f"read runs/NNNN/metrics.json or train.log")
        if ctx.heldout(q):
            return f"{path} is held-out data: it is off limits (only the trusted evaluator reads it)"
        rel = _rel(ctx, q)
        why = off_limits(rel) if rel is not None else None
        if why:
            return f"{path}: {why}"
    for r in reals:
        if not any(under(r, root) for root in ctx.readable):
            return f"{path} is outside the project: you may {what} the project and the libraries it uses"
    return None


def glob_regex(pattern: str):
    """A regex that matches (case-insensitively, hidden files included) at least every
    relative path the glob `pattern` can match: * ? [..] {a,b} and **."""
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
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def tree_problem(ctx: Context, path: str, pattern=None) -> str | None:
    """Why a search below the folder `path` may not run: some entry it could reach (matching
    `pattern`, a compiled glob_regex, by relative path or by base name, as ripgrep's globs do)
    is off limits, or a link leads out of bounds (None: it may). VCS folders are skipped, as
    Claude Code's search does."""
    top = os.path.realpath(ctx.abspath(path))
    if not os.path.isdir(top):
        return None
    for held in ctx.heldout_roots():
        if under(os.path.realpath(held), top):
            return f"{path} contains held-out data ({held}): search a folder that does not"
    seen = 0
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in WALK_SKIP]
        seen += len(dirnames) + len(filenames)
        if seen > WALK_LIMIT:
            return f"{path} is too large to vet: search a smaller folder"
        for name in [f for f in filenames if f not in WALK_SKIP] + dirnames:   # a worktree's .git file
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            if pattern is not None and not (pattern.fullmatch(rel) or pattern.fullmatch(name)):
                continue
            if is_secret(full):
                why = "may hold credentials"
            elif is_eval_log(full):
                why = "is an EVAL log for humans only, off limits (runs/NNNN/train.log has the evaluator's result)"
            elif os.path.islink(full):
                why = "is a link out of bounds" if read_problem(ctx, full) else None
            else:
                prel = _rel(ctx, full)
                why = "is off limits" if prel is not None and off_limits(prel) else None
            if why:
                return f"{path} contains {rel}, which {why}: search a file or folder that does not"
    return None


def edit_problem(ctx: Context, path) -> str | None:
    """Why the file at `path` may not be edited (None: it may)."""
    editable = ctx.policy.editable
    allowed = f"you may edit only {', '.join(editable)} (phase {ctx.policy.phase})"
    if not isinstance(path, str) or not path:
        return "no file path given"
    if "\x00" in path:
        return "NUL bytes are not allowed in paths"
    joined = os.path.join(ctx.cwd, path)
    if ".." in joined.split("/"):
        return f"paths with '..' are not allowed: {allowed}"
    p = os.path.normpath(joined)
    rel = next((p[len(r) + 1:] for r in (ctx.root, ctx.root_real) if p.startswith(r + "/")), None)
    if rel is None:
        return f"{path} is outside the project: {allowed}"
    first = rel.split("/", 1)[0]
    if rel.lower() in NEVER_EDITABLE or first.lower() in NEVER_EDITABLE_DIRS:
        return f"{rel} is part of the harness and never editable: {allowed}"
    if rel.lower() in ctx.policy.frozen:
        return f"{rel} is the human's evaluation script (eval.files, frozen): never editable: {allowed}"
    if not ctx.policy.matches(rel):
        return f"{rel} is not editable: {allowed}"
    target = os.path.join(ctx.root_real, rel)
    try:
        st = os.lstat(target)
    except OSError:
        return f"{rel} does not exist, and creating files is not allowed: {allowed}"
    import stat
    if stat.S_ISLNK(st.st_mode):
        return f"{rel} is a symbolic link: it may only be edited as a regular file"
    if not stat.S_ISREG(st.st_mode):
        return f"{rel} is not a regular file"
    if st.st_nlink > 1:
        return f"{rel} has other hard links (it may be another file under a second name): not editable"
    if os.path.realpath(p) != target:
        return f"{path} reaches {rel} through a symbolic link: not allowed"
    return None
