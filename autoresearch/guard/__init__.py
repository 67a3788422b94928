"""The guard: a default-deny, fail-closed decision on every tool call the research agent makes.

Wired as the PreToolUse hook (hooks/pre_tool_use.py; the command line in
.claude/settings.json turns every failure -- a missing interpreter, an
exception, a timeout, garbage output -- into a block). Each call is answered
with an explicit `allow` or `deny`, so the loop also runs headless in a folder
that was never trusted (where permissions.allow is ignored).

One tool call, step by step (a module each):

1. respond.py  Claude Code's JSON in, one line of JSON out (allow or deny); unreadable input: deny.
2. policy.py   program.md's current phase -> the editable set and web access, compiled once per
               program.md change into .autoresearch/guard-policy.json; invalid program.md: deny all.
3. tools.py    by tool: harmless built-ins allowed; subagents, MCP and unknown tools denied; web only
               in a phase with `web: true`; an input that does not fit the tool's schema denied;
               then the check for the tool:
4. paths.py    Read/LS by name and by every step of the path's resolution (no secrets, held-out
               data, eval logs, `.git/`, under runs/ only the names the flow table gives the agent,
               nothing agent code writes, no FIFOs); Edit/Write only the editable set, as regular
               files, never the harness's own; search.py: Glob/Grep by all they could reach;
               urls.py: WebFetch's URL as a WHATWG parser reads it, its host resolved;
5. cmdlang.py  Bash: only a few templates (`./run.sh -m "..."`, read-only forms); their PATH
               operands get paths.py's read check.

explain.py (not on the hot path) shows a human the same decision: `autoresearch guard explain`.

This package runs once per tool call, so the hot path imports only os, sys and json; pydantic and
YAML load only when program.md changed (policy.py), cmdlang only for Bash.
"""
from .respond import hook as hook
