"""The path policy: what a tool call may read, search or edit, judged by path.

- Read/NotebookRead/LS/Glob/Grep: the project and the interpreter's libraries, except held-out
  data (the test split, the raw downloads), anything that may hold credentials, `.git/` internals,
  EVAL logs, and under `runs/` everything but a short list of names trusted code writes
  (RUN_FILES, RUN_TREES: the agent's view of runs/ is an allowlist decided on the name).
- No decision depends on a path agent code can change between the judgement and the use. Agent
  code writes only in places denied by name (a run's out/, stage scratch, a writable sandbox.home
  or sandbox.cache); a path is resolved one component at a time as the kernel does, and is denied
  if any step of that resolution touches such a place, so every link it follows lies where agent
  code cannot write and resolves the same way when the tool opens it. A FIFO, socket or device is
  never read (it could hang the tool). A search is judged by everything it could reach: below a
  place agent code writes, by what its pattern could match, never by what is there now
  (tree_problem). Hence also: no folder agent code writes holds a file the agent reads, so no
  planted CLAUDE.md is ever loaded (Claude Code loads one from the folder of every file read).
- Paths are judged as Claude Code uses them: leading or trailing whitespace is refused.
- Edit/Write/MultiEdit/NotebookEdit: only the editable set (program.md's files, folders and globs,
  matched by program.editable_regex: the runner's matcher), as existing regular files inside the
  project reached without `..`, symlinks or extra hard links; the harness's own files are never
  editable, whatever program.md says.

Every check is `*_problem(...) -> reason | None` (None: allowed).
"""
from __future__ import annotations

import os
import sys

from ..record import flows
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
MAX_LINKS = 40                                            # as the kernel's ELOOP limit

# The agent's view of runs/ (from the flow table): runs/, runs/NNNN/, and in a run folder only the
# names trusted code writes for the agent (the script's copy, named like the script, comes from
# the policy). Anything else under runs/ -- out/, a lock, whatever a later version adds -- is
# denied by name, whatever is on disk.
RUN_FILES = flows.RUN_AGENT_FILES
RUN_TREES = flows.RUN_AGENT_DIRS                          # folders trusted code fills: all below is readable
# Run folders agent code writes while a run goes (out/): a search that could reach below one is
# denied by what its pattern could match, not by what is there now.
RUN_AGENT_WRITTEN = frozenset(f.where.rstrip("/") for f in flows.FLOWS if f.base == "run"
                              and f.where.endswith("/") and set(f.writers) & set(flows.STAGES))
WHITESPACE = " \t\n\r\x0b\x0c\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
             "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\x85"


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def _is_run_id(name: str) -> bool:
    return len(name) >= 4 and name.isdigit() and name.isascii()


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
        state = flows.state_home(env)                      # stage scratch lives there, outside the project
        self.written = [*policy.agent_written, state, os.path.realpath(state)]   # host folders agent code writes

    def agent_written(self, path: str) -> bool:
        """Is `path` in a host folder agent code writes (outside runs/, which off_limits judges)?"""
        return any(under(path, w) for w in self.written)

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


def off_limits(rel: str, script: str = "train.py") -> str | None:
    """Why a project-relative path is off limits although it is inside the project (None: it is not).
    Case-insensitive where it denies, exact where it allows, so a case-insensitive file system
    cannot spell its way around it."""
    parts = rel.split("/")
    low = [p.lower() for p in parts]
    if ".git" in low:
        return "git internals are off limits: use git status, git diff, git log or git show"
    joined = "/".join(low)
    for hidden in _AGENT_HIDDEN:
        if joined == hidden or joined.startswith(hidden + "/"):
            return f"{hidden} is for the human only (held-out results): it is off limits"
    if low[0] != "runs" or len(parts) < 2:
        return None
    if not _is_run_id(parts[1]):
        return f"{'/'.join(parts[:2])} is not a run folder: under runs/ you may read {_RUN_VIEW}"
    if len(parts) == 2 or parts[2] in RUN_TREES or (len(parts) == 3 and (parts[2] in RUN_FILES or parts[2] == script)):
        return None
    name = low[2]
    if name == "out":
        return "a run's out/ folder is written by agent code: it is off limits (read runs/NNNN/metrics.json or train.log)"
    if name == "eval.log":
        return "eval.log is for humans only: read runs/NNNN/metrics.json or train.log"
    return f"runs/NNNN/{parts[2]} is off limits: under runs/ you may read {_RUN_VIEW}"


_AGENT_HIDDEN = tuple(h.lower() for h in flows.AGENT_HIDDEN_PROJECT)
_RUN_VIEW = ("runs/NNNN/ " + ", ".join(sorted(RUN_FILES)) + ", the script's copy and "
             + ", ".join(f"{t}/" for t in sorted(RUN_TREES)))


def project_rel(ctx: Context, path: str) -> str | None:
    for root in (ctx.root, ctx.root_real):
        if under(path, root):
            return path[len(root):].strip("/")
    return None


def name_problem(ctx: Context, path: str) -> str | None:
    """Why the absolute path `path`, as spelled, may not be reached (None: its name is fine).
    Decided on names only: no file system call."""
    if is_secret(path):
        return "may hold credentials: it is off limits"
    if is_eval_log(path):
        return "eval.log is for humans only (it may quote held-out bytes): read runs/NNNN/metrics.json or train.log"
    if ctx.heldout(path):
        return "is held-out data: it is off limits (only the trusted evaluator reads it)"
    if ctx.agent_written(path):
        return "is in a folder agent code writes (stage scratch, sandbox.home or sandbox.cache): it is off limits"
    rel = project_rel(ctx, path)
    return off_limits(rel, ctx.policy.script) if rel else None


def resolve(ctx: Context, path: str) -> tuple[str | None, str | None]:
    """(real path, None) or (None, why): `path` (absolute) resolved one component at a time as the
    kernel does (`..` after a link goes up from the link's target), each step judged by name_problem,
    so no link on the way may pass through a place the policy hides -- in particular none agent
    code writes, where a link could change between this judgement and the tool's open."""
    import stat
    todo = [c for c in reversed(path.split("/")) if c]
    cur, hops = "/", 0
    while todo:
        c = todo.pop()
        if c == ".":
            continue
        if c == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = cur.rstrip("/") + "/" + c
        why = name_problem(ctx, nxt)
        if why:
            return None, why
        try:
            st = os.lstat(nxt)
        except OSError:                       # missing (or unreadable): the rest is judged lexically
            rest = [nxt] + list(reversed(todo))
            nxt = os.path.normpath("/".join(rest))
            why = name_problem(ctx, nxt)
            return (None, why) if why else (nxt, None)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINKS:
                return None, "too many levels of symbolic links"
            try:
                target = os.readlink(nxt)
            except OSError:
                return None, "a link on the way cannot be read"
            todo.extend(c for c in reversed(target.split("/")) if c)
            if target.startswith("/"):
                cur = "/"
            continue
        cur = nxt
    return cur, None


def _malformed(path, missing: str) -> str | None:
    """Why `path` is no path to judge at all (`missing`: none given), else None."""
    if not isinstance(path, str) or not path:
        return missing
    if "\x00" in path:
        return "NUL bytes are not allowed in paths"
    if path.strip(WHITESPACE) != path:
        return f"{path!r}: leading or trailing whitespace is not allowed in a path"
    return None


def read_problem(ctx: Context, path, what: str = "read") -> str | None:
    """Why `path` may not be read (None: it may). Judged as spelled and as resolved step by step
    (links and `..` as the kernel takes them, from the raw path as a shell passes it and from the
    normalised one Claude Code opens), so no spelling reaches what another hides; and only a regular
    file or a folder is read."""
    if (bad := _malformed(path, "no path given")) is not None:
        return bad
    joined = os.path.join(ctx.cwd, ctx.abspath(path) if path.startswith("~") else path)
    p = os.path.normpath(joined)
    why = name_problem(ctx, p)
    if why:
        return f"{path}: {why}"
    reals = set()
    for q in dict.fromkeys((joined, p)):      # the raw path (a shell's), the normalised one (Claude Code's)
        real, why = resolve(ctx, q)
        if why:
            return f"{path}: {why}"
        reals.add(real)
    import stat
    for r in reals:
        if not any(under(r, root) for root in ctx.readable):
            return f"{path} is outside the project: you may {what} the project and the libraries it uses"
        try:
            mode = os.stat(r).st_mode
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return f"{path} is not a regular file (a FIFO, socket or device): it is never read"
    return None


def edit_problem(ctx: Context, path) -> str | None:
    """Why the file at `path` may not be edited (None: it may)."""
    editable = ctx.policy.editable
    allowed = f"you may edit only {', '.join(editable)} (phase {ctx.policy.phase})"
    if (bad := _malformed(path, "no file path given")) is not None:
        return bad
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
