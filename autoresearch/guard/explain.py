"""`autoresearch guard explain`: the hook's decision on one tool call, for a human (not on the hot path)."""
from __future__ import annotations

import json
import os

from .paths import under
from .policy import PolicyError, load_policy
from .tools import EDIT_TOOLS, READ_TOOLS, SCHEMAS, decide

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
        inp.setdefault(key, [] if kind == "list" else "")
    return inp


def explain(root, tool: str, args) -> int:
    """Print the decision on one tool call as the hook would make it (a table, or JSON with
    --json: the Explanation model); 0 if allowed, 1 if denied."""
    from pydantic import BaseModel

    class Explanation(BaseModel):
        """`autoresearch guard explain --json`: one decision, as the hook makes it."""
        schema_version: int = 1         # as cli/jsonout.SCHEMA_VERSION (the guard imports nothing of the CLI)
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
    cwd = os.getcwd() if under(os.path.realpath(os.getcwd()), os.path.realpath(root)) else root
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
