"""Hook wiring derived from the bundle's own .claude/settings.json, so there is one source of truth.

The bundle wires its hooks as `"$CLAUDE_PROJECT_DIR/.venv/bin/python" ... "$CLAUDE_PROJECT_DIR/hooks/X.py"`.
Two other places need the same commands with other paths:

- the plugin: hooks/hooks.json has one short command per event, `sh scripts/hook EVENT`, and that
  entry (generated here) runs the bundle's command for the event with the hook scripts from the
  plugin root and an interpreter found once, in scripts/autoresearch's order: a development
  checkout's .venv, else `${CLAUDE_PLUGIN_DATA}/venv` (installed there by the SessionStart hook on
  first use, so the plugin folder carries no .venv), else the project's. Plugin hooks act only in a project that has a
  program.md (a plugin installed for the user must not lock down every other project), and the
  loop's hooks (Stop, SessionStart, PreCompact) step aside when the project wires them itself, so
  a decision is never made twice. The guard (PreToolUse) never steps aside: a second deny costs
  milliseconds, a missing one costs the sandbox's integrity.
- a legacy repo set up by `autoresearch init`: absolute paths to the installed bundle's scripts and
  its .venv python, recorded at init time.

Every rewrite keeps the bundle's fail-closed wrapper around the interpreter call: a missing
interpreter still ends in a deny. `derive` refuses a command it does not recognise rather than
guess, so a change to the bundle's wiring breaks a test instead of producing a silent hole.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

PY = '"$CLAUDE_PROJECT_DIR/.venv/bin/python"'
HOOKS = '"$CLAUDE_PROJECT_DIR/hooks/'
LOOP_EVENTS = ("Stop", "SessionStart", "PreCompact")
PLUGIN_ROOT = "${CLAUDE_PLUGIN_ROOT}"
PROJECT = '"${CLAUDE_PROJECT_DIR:-$PWD}"'


ENTRY = "scripts/hook"                    # the plugin's one hook entry, generated (write_plugin_hooks)
# The interpreter search, once, in scripts/autoresearch's order (a test holds the two to the same
# lines): this bundle's own .venv (a development checkout, --plugin-dir of a bootstrapped bundle),
# the plugin's deps in Claude Code's per-plugin data folder, then the project's .venv.
DATA_PY = 'data_py="${CLAUDE_PLUGIN_DATA:+$CLAUDE_PLUGIN_DATA/venv/bin/python}"'
SEARCH = 'for py in "$here/.venv/bin/python" $data_py "${CLAUDE_PROJECT_DIR:-$PWD}/.venv/bin/python"; do'
# The guard never installs anything (it runs on every tool call): no interpreter is a deny that
# says the fix. SessionStart installs (scripts/plugin-deps.sh; idempotent, fast once done).
NO_PYTHON = ('[ -x "$py" ] || { echo "autoresearch guard failed: no Python with the plugin\'s dependencies yet, '
             'so this call is denied. They install at session start into the plugin data folder; a human can run '
             f'{PLUGIN_ROOT}/scripts/plugin-deps.sh (with CLAUDE_PLUGIN_DATA set), then restart the session." >&2; '
             'exit 2; }; ')
INSTALL = (f'[ -x "{PLUGIN_ROOT}/.venv/bin/python" ] || "{PLUGIN_ROOT}/scripts/plugin-deps.sh" >&2 || '
           'echo "autoresearch: installing the plugin\'s dependencies failed (see above)" >&2; ')
INSTALL_TIMEOUT_S = 600                   # the first session start installs pydantic, pyyaml, filelock, rich


class WiringError(ValueError):
    """The bundle's settings.json has a hook command this module does not know how to rewrite."""


def load_settings(bundle: Path) -> dict:
    return json.loads((bundle / ".claude" / "settings.json").read_text())


def _rewrite(command: str, python: str, hooks_dir: str) -> str:
    if PY not in command or HOOKS not in command:
        raise WiringError(f"unrecognised hook command (expected {PY} and {HOOKS}...): {command[:120]}")
    return command.replace(PY, python).replace(HOOKS, f'"{hooks_dir}/')


def _hook_script(command: str) -> str:
    """The hooks/<name>.py a command runs (for the step-aside check)."""
    rest = command.split(HOOKS, 1)[1]
    return "hooks/" + rest.split('"', 1)[0]


def plugin_hooks(settings: dict) -> dict:
    """hooks/hooks.json for the plugin: one short command per event, through the entry. The guard
    denies when the entry itself cannot run (exit 2: the only exit code that blocks a call)."""
    out: dict = {}
    for event, groups in (settings.get("hooks") or {}).items():
        new_groups = []
        for g in groups:
            g = copy.deepcopy(g)
            for h in g.get("hooks", []):
                if h.get("type") != "command":
                    continue
                _rewrite(h["command"], "", "")          # refuse an unknown shape before anything else
                if event == "SessionStart":             # first use: the deps go into the data folder
                    h["timeout"] = max(int(h.get("timeout") or 0), INSTALL_TIMEOUT_S)
                h["command"] = f'sh "{PLUGIN_ROOT}/{ENTRY}" {event}' + (" || exit 2" if event == "PreToolUse" else "")
            new_groups.append(g)
        out[event] = new_groups
    return {"description": "autoresearch: the fail-closed guard and the keep-or-revert loop "
                           f"({ENTRY}, derived from .claude/settings.json by autoresearch.cli.wiring)",
            "hooks": out}


def plugin_entry(settings: dict) -> str:
    """scripts/hook, the plugin's one hook entry: acts only in a project with a program.md (a plugin
    installed for the user must not lock down every other project); the loop's hooks step aside
    when the project wires them itself, so a decision is never made twice (the guard never does: a
    second deny costs milliseconds, a missing one the sandbox's integrity); finds the interpreter
    once; then runs the bundle's own command for the event, with its fail-closed wrapper."""
    gates, bodies = [], []
    for event, groups in (settings.get("hooks") or {}).items():
        for g in groups:
            for h in g.get("hooks", []):
                if h.get("type") != "command":
                    continue
                cmd = h["command"]
                body = _plugin_fixes(_rewrite(cmd, '"$py"', f"{PLUGIN_ROOT}/hooks"))
                gate = INSTALL if event == "SessionStart" else ""
                if event in LOOP_EVENTS:
                    gate += f'grep -qs "{_hook_script(cmd)}" {PROJECT}/.claude/settings.json && exit 0; '
                if gate:
                    gates.append(f"  {event}) {_here(gate).rstrip('; ')};;")
                bodies.append(f"  {event}) {_here((NO_PYTHON if event == 'PreToolUse' else '') + body)};;")
    return "\n".join([
        "#!/bin/sh",
        "# The plugin's one hook entry: hooks/hooks.json runs `sh scripts/hook EVENT`. GENERATED from the",
        "# bundle's .claude/settings.json by `python -m autoresearch.cli.wiring` (see its plugin_entry): edit",
        "# those, not this. The interpreter is found once, in scripts/autoresearch's order.",
        '# the plugin root: as hooks.json found this script (no fork on the guard\'s hot path), else from $0',
        'here="${CLAUDE_PLUGIN_ROOT:-$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)}"',
        f"[ -f {PROJECT}/program.md ] || exit 0",
        'case "$1" in', *gates, "esac",
        DATA_PY, SEARCH, '  [ -x "$py" ] && break', "done",
        'case "$1" in', *bodies,
        '  *) echo "autoresearch: scripts/hook: unknown event $1" >&2; exit 2;;', "esac", ""])


def _here(command: str) -> str:
    """`command` with ${CLAUDE_PLUGIN_ROOT} (which Claude Code expands only in hooks.json itself)
    as the entry's own $here, closing and reopening a single-quoted string around it."""
    out, quote, i = [], "", 0
    while i < len(command):
        if command.startswith(PLUGIN_ROOT, i):
            out.append("'\"$here\"'" if quote == "'" else "$here")
            i += len(PLUGIN_ROOT)
            continue
        c = command[i]
        if c == "\\" and quote != "'":
            out.append(command[i:i + 2])
            i += 2
            continue
        if c in "'\"" and quote in ("", c):
            quote = "" if quote else c
        out.append(c)
        i += 1
    return "".join(out)


# The bundle's messages name its own set-up; a plain project with only the plugin has neither a
# scripts/ folder nor a .venv of ours, so the plugin's messages name the plugin's own fix.
PLUGIN_FIXES = {       # (no quote, $ or backtick: they land inside the commands' quoted strings)
    ".venv is missing, so": "the Python of the plugin (the venv in its data folder) is missing, so",
    ".venv is missing or broken, and": "the Python of the plugin (the venv in its data folder) is missing or broken, and",
    "scripts/bootstrap.sh (or ./run.sh -m baseline)": f"{PLUGIN_ROOT}/scripts/plugin-deps.sh with CLAUDE_PLUGIN_DATA set",
    "scripts/bootstrap.sh": f"{PLUGIN_ROOT}/scripts/plugin-deps.sh with CLAUDE_PLUGIN_DATA set",
}


def _plugin_fixes(command: str) -> str:
    for ours, theirs in PLUGIN_FIXES.items():
        assert not set(theirs.replace(PLUGIN_ROOT, "")) & set("'\"$`"), theirs
        command = command.replace(ours, theirs)
    return command


def read_settings(path: Path) -> dict:
    """A project's .claude/settings.json ({} when there is none). Raises ValueError naming the
    file when it is not valid JSON, so nothing is written over a file a human must fix."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or move it first") from None


def legacy_settings(settings: dict, bundle: Path, python: Path) -> dict:
    """.claude/settings.json for a legacy repo: the bundle's wiring with absolute paths."""
    for p in (bundle, python):
        if any(c in str(p) for c in '"$`\\'):
            raise WiringError(f"{p} has a quote, $, ` or \\ in it, which the hook commands cannot carry safely; "
                              "move the bundle to a plainer path")
    new = copy.deepcopy(settings)
    for groups in (new.get("hooks") or {}).values():
        for g in groups:
            for h in g.get("hooks", []):
                if h.get("type") == "command":
                    h["command"] = _rewrite(h["command"], f'"{python}"', f"{bundle}/hooks")
    return new


def merge_settings(existing: dict, ours: dict) -> dict:
    """The user's settings with ours added: our hooks appended per event (replacing earlier
    autoresearch wiring), deny rules unioned, our env values set. Nothing of theirs is dropped."""
    out = copy.deepcopy(existing)
    hooks = out.setdefault("hooks", {})
    for event, groups in (ours.get("hooks") or {}).items():
        theirs = [g for g in hooks.get(event, [])
                  if not any(_is_ours(h.get("command", "")) for h in g.get("hooks", []))]
        hooks[event] = theirs + copy.deepcopy(groups)
    perms = out.setdefault("permissions", {})
    deny = list(perms.get("deny", []))
    for rule in (ours.get("permissions") or {}).get("deny", []):
        if rule not in deny:
            deny.append(rule)
    perms["deny"] = deny
    out.setdefault("env", {}).update((ours.get("env") or {}))
    return out


def _is_ours(command: str) -> bool:
    return any(f"hooks/{n}.py" in command for n in ("pre_tool_use", "stop", "session_start", "pre_compact"))


def write_plugin_hooks(bundle: Path) -> Path:
    """Regenerate hooks/hooks.json and scripts/hook from .claude/settings.json
    (`python -m autoresearch.cli.wiring`)."""
    out = bundle / "hooks" / "hooks.json"
    out.write_text(json.dumps(plugin_hooks(load_settings(bundle)), indent=2) + "\n")
    entry = bundle / ENTRY
    entry.write_text(plugin_entry(load_settings(bundle)))
    entry.chmod(0o755)
    return out


if __name__ == "__main__":
    print(write_plugin_hooks(Path(__file__).resolve().parents[2]))
