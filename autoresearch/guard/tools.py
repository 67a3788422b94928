"""Per-tool decisions: which tool may run at all, whether its input fits the tool's schema, and
which check judges it (paths.py for files and searches, cmdlang.py for Bash, url_problem for the web).

- Any tool input that does not fit the tool's schema is denied.
- WebFetch/WebSearch: only in a phase with `web: true`; WebFetch only to the public web.
- Bash: only the forms of cmdlang.py (`./run.sh -m "..."` and the read-only tools an agent
  habitually types: grep, rg, find, ls, cat, head, tail, wc, git log/show/diff/status, pwd),
  whose path operands get the same read check as Read, and whose walks (grep -r, rg, find,
  ls -R) are judged by everything they could reach (search.reach_problem).
- A few harmless built-ins (todo lists, plan mode, a background job's output) are allowed;
  subagents, MCP tools and anything unknown are denied.
"""
from __future__ import annotations

import os

from .paths import WHITESPACE, Context, edit_problem, name_problem, read_problem
from .search import glob_regex, reach_problem, readable_parts, tracked_problem, tree_problem
from .policy import PolicyError, load_policy

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
        return hint(command, str(e), root=ctx.root_real), None
    if m.argv[0] == "./run.sh" and \
            os.path.realpath(os.path.join(ctx.cwd, "run.sh")) != os.path.join(ctx.root_real, "run.sh"):
        return "./run.sh here is not the project's run.sh: run it from the project folder", m.template
    for path in [ctx.cwd, *m.paths]:          # git and a bare `ls` work on the folder they run in
        why = read_problem(ctx, path)
        if why:
            return why, m.template
    for name in m.names:                      # git show REV:PATH (and a word git may take as a path)
        why = name_problem(ctx, os.path.normpath(os.path.join(ctx.root, name)))
        if why:
            return f"{name}: {why}", m.template
    if m.tracked is not None:                 # git grep: the tracked files it reads
        why = tracked_problem(ctx, m.tracked, typed=" ".join(w.raw for w in m.words))
        if why:
            return why, m.template
    for index, path, follow, names_only, depth in m.walks:
        why = reach_problem(ctx, path, follow, names_only, depth)
        if why:
            return _walk_denied(ctx, m, index, path, why, follow=follow, names_only=names_only, depth=depth), m.template
    return None, m.template


def _walk_denied(ctx: Context, m, index, path: str, why: str, **walk) -> str:
    """A walk that reaches what is hidden: why, and the same command over the parts of that folder
    a walk may reach whole (the closest form that runs)."""
    what = "list" if walk.get("names_only") else "search"
    parts = readable_parts(ctx, path, **walk)
    typed = " ".join(w.raw for w in m.words)
    so = ("so the guard cannot vouch for `{}`" if "too large to vet" in why
          else "so `{}` would reach what is off limits").format(typed)
    if not parts:
        return f"{why}, {so}: {what} a folder below it whose whole contents you may read"
    raw = [w.raw for w in m.words]
    if index is None:
        at = m.implicit if m.implicit is not None else len(raw)
        raw[at:at] = parts
    else:
        raw[index:index + 1] = parts
    return f"{why}, {so}; {what} the parts you may read: `{' '.join(raw)}`"


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
        if tool == "WebFetch":
            from .urls import url_problem
            why = url_problem(inp.get("url"))
        else:
            why = None
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
    `path` that its `pattern` matches. Both are judged by what they could reach, with the glob
    as Claude Code passes it on: Grep's `glob` is split on whitespace and commas into several
    ripgrep globs, so a glob with either (or a backslash, or a leading `./`, which ripgrep reads
    its own way) is refused rather than judged as one."""
    path = inp.get("path") or ctx.cwd
    why = read_problem(ctx, path, "search")
    if why:
        return why
    key = "pattern" if tool == "Glob" else "glob"
    pat = inp.get(key)
    if pat is None:
        return tree_problem(ctx, path) if tool == "Grep" else None
    if "\x00" in pat or not pat:
        return f"malformed {key}"
    if tool == "Grep":
        bad = next((c for c in pat if c in ",\\" or c.isspace() or c in WHITESPACE), None)
        if bad is not None or pat.startswith("./"):
            return (f"one plain glob per Grep call, without whitespace, commas, backslashes or a leading './' "
                    f"(Claude Code would split or reread {pat!r}): call Grep once per glob")
    if pat.strip(WHITESPACE) != pat:
        return f"{pat!r}: leading or trailing whitespace is not allowed in a {tool} {key}"
    parts = pat.replace("\\", "/").split("/")
    if ".." in parts:
        return f"'..' is not allowed in a {tool} {key}: set path instead"
    if pat.startswith(("/", "~")):
        return f"give the {tool} {key} relative to path (set path to the folder)"
    if ".git" in (p.lower() for p in parts):
        return "git internals are off limits: use git status, git diff, git log or git show"
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
