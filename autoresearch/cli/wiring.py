"""Hook wiring derived from the bundle's own .claude/settings.json, so there is one source of truth.

The bundle wires its hooks as `"$CLAUDE_PROJECT_DIR/.venv/bin/python" ... "$CLAUDE_PROJECT_DIR/hooks/X.py"`.
Two other places need the same commands with other paths:

- the plugin (hooks/hooks.json): the hook scripts come from `${CLAUDE_PLUGIN_ROOT}`, the interpreter
  from `${CLAUDE_PLUGIN_DATA}/venv` (installed there by the SessionStart hook on first use, so the
  plugin folder carries no .venv), else a development checkout's .venv, else the project's. Plugin hooks act only in a project that has a
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


DATA_VENV = '"${CLAUDE_PLUGIN_DATA:-/nonexistent}/venv/bin/python"'
# The plugin's interpreter: the deps installed into Claude Code's per-plugin data folder, else a
# development checkout's own .venv (--plugin-dir of a bootstrapped bundle), else the project's.
PICK = (f'py={DATA_VENV}; [ -x "$py" ] || py="{PLUGIN_ROOT}/.venv/bin/python"; '
        f'[ -x "$py" ] || py={PROJECT}/.venv/bin/python; ')
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
    """hooks/hooks.json for the plugin, from the bundle's settings.json."""
    out: dict = {}
    for event, groups in (settings.get("hooks") or {}).items():
        new_groups = []
        for g in groups:
            g = copy.deepcopy(g)
            for h in g.get("hooks", []):
                if h.get("type") != "command":
                    continue
                cmd = h["command"]
                _rewrite(cmd, "", "")                   # refuse an unknown shape before anything else
                script = _hook_script(cmd)
                gate = f'[ -f {PROJECT}/program.md ] || exit 0; '
                if event == "SessionStart":             # first use: the deps go into the data folder
                    gate += INSTALL
                    h["timeout"] = max(int(h.get("timeout") or 0), INSTALL_TIMEOUT_S)
                if event in LOOP_EVENTS:
                    gate += (f'grep -qs "{script}" {PROJECT}/.claude/settings.json && exit 0; ')
                pick = PICK + (NO_PYTHON if event == "PreToolUse" else "")
                h["command"] = gate + pick + _plugin_fixes(_rewrite(cmd, '"$py"', f"{PLUGIN_ROOT}/hooks"))
            new_groups.append(g)
        out[event] = new_groups
    return {"description": "autoresearch: the fail-closed guard and the keep-or-revert loop "
                           "(derived from .claude/settings.json by autoresearch.cli.wiring)",
            "hooks": out}


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
    """Regenerate hooks/hooks.json from .claude/settings.json (`python -m autoresearch.cli.wiring`)."""
    out = bundle / "hooks" / "hooks.json"
    out.write_text(json.dumps(plugin_hooks(load_settings(bundle)), indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(write_plugin_hooks(Path(__file__).resolve().parents[2]))
