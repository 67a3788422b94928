"""The guard: a default-deny, fail-closed decision on every tool call the research agent makes.

Wired as the PreToolUse hook (hooks/pre_tool_use.py; the command line in
.claude/settings.json turns every failure -- a missing interpreter, an
exception, a timeout, garbage output -- into a block). Each call is answered
with an explicit `allow` or `deny`, so the loop also runs headless in a folder
that was never trusted (where permissions.allow is ignored).

Policy, from program.md's current phase:
- Edit/Write/MultiEdit/NotebookEdit: only the editable set, as existing regular
  files inside the project reached without `..`, symlinks or extra hard links;
  the harness's own files are never editable, whatever program.md says.
- Read/NotebookRead/LS/Glob/Grep: by real path, the project and the interpreter's
  libraries, except held-out data (the test split, the raw downloads), anything that
  may hold credentials, `.git/` internals, any run's `out/` folder and `eval.log`
  (written by agent code while it saw evaluation inputs).
- Bash: only the templates of autoresearch/guard/cmdlang.py (`./run.sh -m "..."` and a few
  read-only forms), whose PATH operands get the same read check.
- Any tool input that does not fit the tool's schema is denied.
- WebFetch/WebSearch: only in a phase with `web: true`.
- A few harmless built-ins (todo lists, plan mode, a background job's output) are
  allowed; subagents, MCP tools and anything unknown are denied.

This module runs once per tool call, so it is kept off heavy imports: the policy
is compiled from program.md (pydantic + YAML, ~150 ms) only when program.md's
sha256 changes, into .autoresearch/guard-policy.json; the hot path needs only
os and json.
"""
from __future__ import annotations

import json
import os
import sys

POLICY_VERSION = 1
CACHE = ".autoresearch/guard-policy.json"
PROGRAM = "program.md"

# The harness's own files: never editable, even if program.md lists them. (Only names the
# harness owns in every project, including a legacy repo set up by `autoresearch init`.)
NEVER_EDITABLE = {"program.md", "prepare.py", "run.sh", "results.tsv"}
NEVER_EDITABLE_DIRS = {".claude", ".claude-plugin", "hooks", ".git", ".autoresearch", "autoresearch",
                       "container", "runs", ".venv"}

EDIT_TOOLS = {"Edit": "file_path", "Write": "file_path", "MultiEdit": "file_path",
              "NotebookEdit": "notebook_path"}
READ_TOOLS = {"Read": "file_path", "NotebookRead": "notebook_path", "LS": "path"}
# Built-ins that touch no file, run nothing and reach nothing: todo lists, plan mode,
# loading a deferred tool's schema (the tool itself is then guarded), and the output of
# or a stop for a background job (run_in_background is denied, but Claude Code may
# background a long command itself).
HARMLESS = {"TodoWrite", "TaskCreate", "TaskUpdate", "TaskList", "TaskGet", "TaskOutput", "TaskStop",
            "BashOutput", "KillShell", "KillBash", "ExitPlanMode", "EnterPlanMode", "ToolSearch"}
DENIED_TOOLS = {
    "Agent": "subagents are not allowed (the guard does not reach inside them): do the work yourself",
    "Task": "subagents are not allowed (the guard does not reach inside them): do the work yourself",
    "AskUserQuestion": "nobody is watching: decide yourself and note the open question in scratchpad.md",
    "Skill": "skills are not available to the research agent",
    "SlashCommand": "slash commands are not available to the research agent",
    "EnterWorktree": "worktrees are not allowed: trusted code does git",
}

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


class PolicyError(Exception):
    """program.md (or the policy compiled from it) cannot be used; the message names the problem."""


class Policy:
    __slots__ = ("phase", "editable", "web")

    def __init__(self, phase: str, editable: list[str], web: bool):
        self.phase, self.editable, self.web = phase, editable, web


def _digest(data: bytes) -> str:
    try:                                    # the bare C module: hashlib would load OpenSSL (~2 ms)
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return sha256(data).hexdigest()


def load_policy(root: str) -> Policy:
    """The current phase's policy, from the cache when program.md is unchanged, else compiled."""
    try:
        with open(os.path.join(root, PROGRAM), "rb") as f:
            text = f.read()
    except OSError as e:
        raise PolicyError(f"{PROGRAM}: cannot read it ({e.strerror or e}): fix program.md") from None
    digest = _digest(text)
    cache = os.path.join(root, CACHE)
    try:
        with open(cache, "rb") as f:
            data = json.loads(f.read())
        if data.get("version") == POLICY_VERSION and data.get("program_sha256") == digest:
            return _policy(data)
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        pass                                # missing, unreadable or stale: rebuild
    data = compile_policy(text)
    data["program_sha256"] = digest
    try:
        from ..atomic import write_atomic
        write_atomic(cache, json.dumps(data, indent=1))
    except OSError:
        pass                                # a read-only tree costs speed, not correctness
    return _policy(data)


def compile_policy(text: bytes) -> dict:
    """Validate program.md with the real schema; raises PolicyError naming the problem."""
    from ..program import ConfigError, parse_program
    try:
        program = parse_program(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PolicyError(f"{PROGRAM}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ConfigError as e:
        raise PolicyError(str(e)) from None
    return {"version": POLICY_VERSION, "phase": program.phase, "editable": program.editable_files(),
            "web": program.current.web}


def _policy(data: dict) -> Policy:
    phase, editable, web = data["phase"], data["editable"], data["web"]
    if not (isinstance(phase, str) and isinstance(web, bool) and isinstance(editable, list)
            and all(isinstance(e, str) and e and not e.startswith("/") and ".." not in e.split("/")
                    for e in editable)):
        raise TypeError("malformed policy")
    return Policy(phase, editable, web)


# ---------------------------------------------------------------------------
# Paths

def _under(path: str, root: str) -> bool:
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
            if _under(folder, os.path.join(os.path.realpath(config), "projects")):
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
            if _under(low, cache.lower()):
                rest = low[len(cache):].strip("/").split("/")
                if rest[0] == "downloads" or (rest[0] == "data" and len(rest) >= 3 and rest[2] == "test"):
                    return True
        return any(_under(low, t.lower()) for t in self.data_tests)

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
        if _under(path, root):
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
        if not any(_under(r, root) for root in ctx.readable):
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
        if _under(os.path.realpath(held), top):
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
    if rel in NEVER_EDITABLE or first in NEVER_EDITABLE_DIRS:
        return f"{rel} is part of the harness and never editable: {allowed}"
    if rel not in editable:
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


# ---------------------------------------------------------------------------
# Bash

def bash_problem(ctx: Context, tool_input: dict) -> tuple[str | None, str | None]:
    """(why it is denied or None, the template it matched or None)."""
    from .cmdlang import Denied, match
    if tool_input.get("run_in_background"):
        return "background commands are not allowed: run it in the foreground", None
    if tool_input.get("dangerouslyDisableSandbox"):
        return "dangerouslyDisableSandbox is not allowed", None
    command = tool_input.get("command")
    try:
        m = match(command)
    except Denied as e:
        from .cmdlang import hint
        return hint(command, str(e)), None
    if m.argv[0] == "./run.sh" and \
            os.path.realpath(os.path.join(ctx.cwd, "run.sh")) != os.path.join(ctx.root_real, "run.sh"):
        return "./run.sh here is not the project's run.sh: run it from the project folder", m.template
    for path in [ctx.cwd, *m.paths]:          # git and a bare `ls` work on the folder they run in
        why = read_problem(ctx, path)
        if why:
            return why, m.template
    return None, m.template


# ---------------------------------------------------------------------------
# Tool input shapes (claude-code-facts.md): required keys, then optional ones, with their types.
# Anything else -- an extra key, a wrong type -- is denied: the guard judges only inputs it knows.

_S, _I, _B, _N, _L = "str", "int", "bool", "number", "list"
SCHEMAS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "Bash": ({"command": _S}, {"description": _S, "timeout": _N, "run_in_background": _B,
                                "dangerouslyDisableSandbox": _B}),
    "Read": ({"file_path": _S}, {"offset": _I, "limit": _I, "pages": _S}),
    "NotebookRead": ({"notebook_path": _S}, {"cell_id": _S}),
    "LS": ({"path": _S}, {"ignore": _L}),
    "Glob": ({"pattern": _S}, {"path": _S}),
    "Grep": ({"pattern": _S}, {"path": _S, "glob": _S, "type": _S, "output_mode": _S, "-i": _B, "-n": _B,
                               "-A": _I, "-B": _I, "-C": _I, "context": _I, "head_limit": _I, "offset": _I,
                               "multiline": _B}),
    "Edit": ({"file_path": _S, "old_string": _S, "new_string": _S}, {"replace_all": _B}),
    "MultiEdit": ({"file_path": _S, "edits": _L}, {}),
    "Write": ({"file_path": _S, "content": _S}, {}),
    "NotebookEdit": ({"notebook_path": _S, "new_source": _S}, {"cell_id": _S, "cell_type": _S, "edit_mode": _S}),
    "WebFetch": ({"url": _S, "prompt": _S}, {}),
    "WebSearch": ({"query": _S}, {"allowed_domains": _L, "blocked_domains": _L}),
}


def _fits(value, kind: str) -> bool:
    if kind == _S:
        return isinstance(value, str)
    if kind == _B:
        return isinstance(value, bool)
    if kind == _L:
        return isinstance(value, list)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (kind == _N and isinstance(value, float))


def schema_problem(tool: str, inp: dict) -> str | None:
    """Why `inp` does not fit the tool's input shape (None: it does, or the tool has no shape here)."""
    shape = SCHEMAS.get(tool)
    if shape is None:
        return None
    required, optional = shape
    for key, kind in required.items():
        if key not in inp:
            return f"malformed {tool} call: {key} is missing"
        if not _fits(inp[key], kind):
            return f"malformed {tool} call: {key} must be a {kind}"
    for key, value in inp.items():
        kind = required.get(key) or optional.get(key)
        if kind is None:
            return f"malformed {tool} call: unknown key {key!r}"
        if value is not None and not _fits(value, kind):
            return f"malformed {tool} call: {key} must be a {kind}"
    return None


# ---------------------------------------------------------------------------
# Decisions

def decide(payload: dict, root: str, env=None) -> tuple[bool, str]:
    """(allowed, reason) for one PreToolUse payload. Raises only on internal failure (-> deny)."""
    tool = payload.get("tool_name")
    inp = payload.get("tool_input")
    if not isinstance(tool, str) or not isinstance(inp, dict):
        return False, "malformed tool call"
    try:
        policy = load_policy(root)
    except PolicyError as e:
        return False, f"the guard cannot load its policy, so every call is denied: {e}"
    if tool in HARMLESS:
        return True, f"{tool} is harmless"
    if tool in DENIED_TOOLS:
        return False, DENIED_TOOLS[tool]
    if tool.startswith("mcp__") or tool in ("ListMcpResourcesTool", "ReadMcpResourceTool"):
        return False, "MCP tools are not available to the research agent"
    if tool in ("WebFetch", "WebSearch"):
        if not policy.web:
            return False, (f"web access is off in phase {policy.phase}: it is on only in phases with "
                           "`web: true` in program.md; note what you would look up in scratchpad.md")
        why = url_problem(inp.get("url")) if tool == "WebFetch" else None
        return (False, why) if why else (True, f"web access is on in phase {policy.phase}")
    why = schema_problem(tool, inp)
    if why:
        return False, why
    ctx = Context(root, policy, payload.get("cwd"), env, payload.get("transcript_path"))
    if tool in EDIT_TOOLS:
        why = edit_problem(ctx, inp.get(EDIT_TOOLS[tool]))
        return (False, why) if why else (True, f"{inp[EDIT_TOOLS[tool]]} is editable")
    if tool in READ_TOOLS:
        why = read_problem(ctx, inp.get(READ_TOOLS[tool]))
        return (False, why) if why else (True, "readable")
    if tool in ("Glob", "Grep"):
        why = _search_problem(ctx, tool, inp)
        return (False, why) if why else (True, "readable")
    if tool == "Bash":
        why, template = bash_problem(ctx, inp)
        return (False, why) if why else (True, f"matches `{template}`")
    return False, f"the {tool} tool is not available to the research agent"


def _search_problem(ctx: Context, tool: str, inp: dict) -> str | None:
    """Grep reads every file below `path` that its `glob` matches; Glob lists every name below
    `path` that its `pattern` matches. Both are judged by what they could reach."""
    path = inp.get("path") or ctx.cwd
    why = read_problem(ctx, path, "search")
    if why:
        return why
    pat = inp.get("pattern" if tool == "Glob" else "glob")
    if pat is None:
        return tree_problem(ctx, path) if tool == "Grep" else None
    key = "pattern" if tool == "Glob" else "glob"
    if "\x00" in pat:
        return f"malformed {key}"
    parts = pat.replace("\\", "/").split("/")
    if ".." in parts:
        return f"'..' is not allowed in a {tool} {key}: set path instead"
    if pat.startswith(("/", "~")):
        return f"give the {tool} {key} relative to path (set path to the folder)"
    why = off_limits(pat.replace("\\", "/").lstrip("!"))
    if why:
        return why
    if tool == "Glob":
        fixed = []
        for part in parts:                      # the literal folders before the first wildcard
            if any(c in part for c in "*?[{"):
                break
            fixed.append(part)
        if len(fixed) == len(parts):            # no wildcard: one path
            return read_problem(ctx, os.path.join(ctx.abspath(path), pat), "search")
        base = os.path.join(ctx.abspath(path), *fixed)
        why = read_problem(ctx, base, "search")
        if why:
            return why
        rest = "/".join(parts[len(fixed):])
        return tree_problem(ctx, base, glob_regex(rest))
    if pat.startswith("!"):                     # an exclusion: everything else is searched
        return tree_problem(ctx, path)
    return tree_problem(ctx, path, glob_regex(pat))


def url_problem(url) -> str | None:
    """WebFetch may reach the public web only: not this machine, its network or a cloud metadata
    service (a name that resolves to such an address is not caught here; the sandbox has no network)."""
    if not isinstance(url, str) or "\x00" in url:
        return "malformed url"
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".").lower()
    except ValueError:
        return "malformed url"
    if parts.scheme not in ("http", "https") or not host:
        return "only http(s) URLs can be fetched"
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")) or \
            ("." not in host and ":" not in host and not host.isdigit()):
        return f"{host} is a local name: only the public web can be fetched"
    import ipaddress
    import socket
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:                                    # 2130706433, 0x7f.1: other spellings of 127.0.0.1
            ip = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None
    if not ip.is_global:
        return f"{host} is not a public address: only the public web can be fetched"
    return None


def render(allowed: bool, reason: str) -> str:
    """The hook's stdout: the PreToolUse decision in Claude Code's JSON shape (one line)."""
    return json.dumps({"hookSpecificOutput": {
        "hookEventName": "PreToolUse",
        "permissionDecision": "allow" if allowed else "deny",
        "permissionDecisionReason": ("autoresearch guard: " + reason)[:2000]}})


def hook(stdin: bytes, env=None) -> str:
    """One PreToolUse call: the JSON Claude Code sent in, the JSON decision out."""
    env = os.environ if env is None else env
    try:
        payload = json.loads(stdin)
    except ValueError:
        return render(False, "the hook input is not JSON")
    if not isinstance(payload, dict) or payload.get("hook_event_name") != "PreToolUse":
        return render(False, "the hook input is not a PreToolUse call")
    root = env.get("CLAUDE_PROJECT_DIR")
    if not root or not os.path.isabs(root) or not os.path.isdir(root):
        return render(False, "CLAUDE_PROJECT_DIR is not set to the project folder")
    return render(*decide(payload, root, env))


# ---------------------------------------------------------------------------
# For humans: `autoresearch guard explain`

_PATH_KEY = {**EDIT_TOOLS, **READ_TOOLS, "Glob": "path", "Grep": "path", "LS": "path"}


def tool_input_from(tool: str, args) -> dict:
    """Build a tool_input from `guard explain` arguments (--input JSON wins)."""
    if args.input:
        return json.loads(args.input)
    if tool == "Bash":
        return {"command": " ".join(args.command)}
    inp: dict = {}
    if args.path is not None:
        inp[_PATH_KEY.get(tool, "file_path")] = os.path.abspath(args.path) if tool in EDIT_TOOLS else args.path
    for key in ("pattern", "url", "query"):
        if getattr(args, key) is not None:
            inp[key] = getattr(args, key)
    if tool == "WebFetch":
        inp.setdefault("prompt", "explain")
    for key, kind in SCHEMAS.get(tool, ({}, {}))[0].items():   # the rest of the shape, as filler
        inp.setdefault(key, [] if kind == _L else "")
    return inp


def explain(root, tool: str, args) -> int:
    """Print the decision on one tool call as the hook would make it (a table, or JSON with
    --json: the Explanation model); 0 if allowed, 1 if denied."""
    from pydantic import BaseModel

    class Explanation(BaseModel):
        """`autoresearch guard explain --json`: one decision, as the hook makes it."""
        decision: str                   # allow | deny
        reason: str
        tool: str
        tool_input: dict
        template: str | None = None     # Bash: the template the command fits
        argv: list[str] | None = None   # Bash: the program and arguments bash will run
        lexer: str | None = None        # Bash: why the command is not in the language
        phase: str | None = None

    root = str(root)
    inp = tool_input_from(tool, args)
    cwd = os.getcwd() if _under(os.path.realpath(os.getcwd()), os.path.realpath(root)) else root
    allowed, reason = decide({"tool_name": tool, "tool_input": inp, "cwd": cwd}, root)
    ex = Explanation(decision="allow" if allowed else "deny", reason=reason, tool=tool, tool_input=inp)
    if tool == "Bash":
        from .cmdlang import Denied, match
        try:
            m = match(inp.get("command"))
            ex.template, ex.argv = m.template, m.argv
        except Denied as e:
            ex.lexer = str(e)
    try:
        ex.phase = load_policy(root).phase
    except PolicyError:
        pass
    if getattr(args, "json", False):
        print(ex.model_dump_json(indent=1))
        return 0 if allowed else 1
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_row("[bold]decision[/]", "[bold green]ALLOW[/]" if allowed else "[bold red]DENY[/]")
    table.add_row("[bold]why[/]", escape(reason))
    table.add_row("[bold]tool[/]", escape(f"{tool} {json.dumps(inp)}"))
    if ex.template:
        table.add_row("[bold]template[/]", escape(ex.template))
        table.add_row("[bold]runs[/]", escape(" ".join(repr(a) for a in ex.argv or [])))
    elif ex.lexer:
        table.add_row("[bold]no template[/]", escape(ex.lexer))
    if ex.phase:
        table.add_row("[bold]phase[/]", ex.phase)
    Console(soft_wrap=True).print(table)
    return 0 if allowed else 1
