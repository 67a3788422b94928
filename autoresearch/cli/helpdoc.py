"""The README's command tables, generated from the argparse parsers, and its threat-model flow
table, generated from autoresearch/record/flows.py, so they cannot drift.

README.md holds cog blocks (`cogapp`, in the test extra) that print `commands_markdown()` and
`flows_markdown()`;
`tests/cli/test_readme_commands.py` runs `cog --check README.md` and fails when the README is stale.
Regenerate with `.venv/bin/cog -r README.md` (or print the tables: `python -m autoresearch.cli.helpdoc`).
Only the parsers are read: no command runs, and the text does not depend on the terminal's width.
"""
from __future__ import annotations

import argparse


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions
            if a.help != argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _spelling(a: argparse.Action) -> str:
    """How a human types it: `-C, --project DIR`, `--json`, `REASON ...`."""
    meta = a.metavar or (a.dest.upper() if a.option_strings else a.dest)
    if a.choices and not a.metavar:
        meta = "{" + ",".join(map(str, a.choices)) + "}"
    if not a.option_strings:
        meta = meta if a.choices else str(meta).upper()
        return f"{meta} ..." if a.nargs in ("*", "+") else str(meta)
    flags = ", ".join(sorted(a.option_strings, key=len))
    return flags if a.nargs == 0 else f"{flags} {meta}"


def _meaning(a: argparse.Action) -> str:
    text = a.help or ""
    if a.required and a.option_strings:
        text += " (required)"
    if a.option_strings and a.nargs != 0 and a.default not in (None, argparse.SUPPRESS) \
            and str(a.default) not in text:
        text += f" (default: {a.default})"
    return text


def _flags_table(p: argparse.ArgumentParser) -> list[str]:
    rows = [f"| `{_cell(_spelling(a))}` | {_cell(_meaning(a))} |" for a in _visible(p)]
    return ["| argument | meaning |", "|---|---|", *rows] if rows else ["(no arguments)"]


def _subcommands(ap: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) for every leaf subcommand, nested ones (`guard explain`) included."""
    out = []
    for act in ap._actions:
        if not isinstance(act, argparse._SubParsersAction):
            continue
        helps = {c.dest: c.help or "" for c in act._choices_actions}
        for name, sub in act.choices.items():
            nested = _subcommands(sub, f"{prefix} {name}")
            out.extend(nested or [(f"{prefix} {name}", helps.get(name) or sub.description or "", sub)])
    return out


def commands_markdown() -> str:
    """The summary table of every command, then each command's arguments."""
    from ..run import build_parser as run_parser
    from .app import build_parser
    top = build_parser()
    cmds = [("./run.sh", run_parser().description or "", run_parser()), ("autoresearch", top.description or "", top)]
    cmds += _subcommands(top, "autoresearch")
    lines = ["| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#{_anchor(name)}) | {_cell(help)} |" for name, help, _ in cmds]
    for name, _, sub in cmds:
        lines += ["", f"#### `{name}`", "", *_flags_table(sub), *_exits(name, sub)]
    return "\n".join(lines) + "\n"


def _exits(name: str, p: argparse.ArgumentParser) -> list[str]:
    """One line of exit codes: the parser's own (cli/app.py), or ./run.sh's (run/exits.py)."""
    codes = getattr(p, "exit_codes", None)
    if name == "./run.sh":
        from ..record import RunExit
        codes = {int(e): e.name.lower().replace("_", " ") for e in RunExit}
    if not codes:
        return []
    return ["", "Exit codes: " + "; ".join(f"`{c}` {_cell(t)}" for c, t in sorted(codes.items())) + "."]


ACTOR_LABELS = {"agent:read": "agent (Read, Bash searches and reads)", "agent:edit": "agent (Edit, Write)",
                "train": "TRAIN", "server": "model servers", "eval.command": "eval.command",
                "final": "final", "host": "host code", "human": "human"}
HOLD_LABELS = {"agent": "agent-written", "train": "train split", "val": "VALIDATION text", "test": "TEST text",
               "secret": "SECRETS"}
BASE_LABELS = {"project": "project", "run": "`runs/NNNN/`", "state": "state folder (outside the project)",
               "data": "data folder", "cache": "`~/.cache/autoresearch`", "config": "`~/.config/autoresearch`",
               "sandbox": "inside one sandbox", "user": "declared in program.md"}


def flows_markdown() -> str:
    """The flow table (autoresearch.record.flows.FLOWS) as the README's threat-model table: every place
    and channel, who writes it, who may read it, and what it may hold."""
    from ..record.flows import FLOWS
    lines = ["| place | where | written by | read by | may hold | why |", "|---|---|---|---|---|---|"]
    for f in FLOWS:
        where = f.where if f.base in ("project", "user") else f"{BASE_LABELS[f.base]}: {f.where}"
        holds = ", ".join(HOLD_LABELS[h] for h in sorted(f.holds)) or "trusted data only"
        lines.append(f"| {_cell(f.name)} | {_cell(where)} | {_cell(', '.join(ACTOR_LABELS[a] for a in f.writers))} | "
                     f"{_cell(', '.join(ACTOR_LABELS[a] for a in f.readers))} | {_cell(holds)}"
                     f"{' (each its own)' if f.private else ''} | {_cell(f.why)} |")
    return "\n".join(lines) + "\n"


def _anchor(name: str) -> str:
    """GitHub's heading anchor for `#### `name``: lower case, punctuation dropped, spaces to dashes."""
    keep = "".join(c for c in name.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


if __name__ == "__main__":
    print(commands_markdown(), end="")
