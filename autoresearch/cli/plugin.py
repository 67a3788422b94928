"""Plugin-only mode: the hooks come from the installed plugin, and the project has no
`.claude/settings.json` wiring of its own. A plugin cannot set Claude Code's environment, so
two defaults stay in force unless the project's settings set them:

- `CLAUDE_CODE_STOP_HOOK_BLOCK_CAP`: after 8 consecutive Stop-hook blocks Claude Code overrides
  the hook, so the loop would end after about 8 experiments;
- `BASH_DEFAULT_TIMEOUT_MS` / `BASH_MAX_TIMEOUT_MS`: 120 s by default (600 s at most), which cuts
  a 300 s experiment.

`autoresearch init --plugin` writes just these into `.claude/settings.json` (merged, nothing else
touched); `autoresearch doctor` says when they are missing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_atomic
from .wiring import read_settings

PLUGIN_NAME = "autoresearch"
STOP_CAP_KEY = "CLAUDE_CODE_STOP_HOOK_BLOCK_CAP"
STOP_CAP = 1000                           # far more experiments than a night holds
DEFAULT_STOP_CAP = 8
TIMEOUT_KEYS = ("BASH_DEFAULT_TIMEOUT_MS", "BASH_MAX_TIMEOUT_MS")


def settings_path(root: Path) -> Path:
    return Path(root) / ".claude" / "settings.json"


def project_wires_hooks(settings: dict) -> bool:
    """True when the project's settings wire the autoresearch guard themselves (bundle or init)."""
    return "pre_tool_use.py" in json.dumps(settings.get("hooks") or {})


def plugin_enabled(home: Path | None = None) -> bool:
    """The autoresearch plugin is installed and enabled for this user (or we run inside it)."""
    if os.environ.get("CLAUDE_PLUGIN_ROOT"):
        return True
    base = Path(os.environ.get("CLAUDE_CONFIG_DIR") or (Path(home or Path.home()) / ".claude"))
    try:
        enabled = json.loads((base / "settings.json").read_text()).get("enabledPlugins") or {}
    except (OSError, ValueError):
        return False
    return any(k.split("@")[0] == PLUGIN_NAME and v for k, v in enabled.items())


def bash_timeout_ms(program) -> int:
    """Enough for one experiment (program.Budget.experiment_seconds)."""
    return int(program.budget.experiment_seconds() * 1000)


def loop_env(program) -> dict[str, str]:
    need = str(bash_timeout_ms(program))
    return {STOP_CAP_KEY: str(STOP_CAP), TIMEOUT_KEYS[0]: need, TIMEOUT_KEYS[1]: need}


def missing_env(settings: dict, program) -> list[str]:
    """What the settings lack for a night: one line per missing or too small value."""
    env = settings.get("env") or {}
    out = []

    def num(key: str) -> int:
        try:
            return int(env.get(key) or 0)
        except (TypeError, ValueError):
            return 0
    if num(STOP_CAP_KEY) < 100:
        out.append(f"{STOP_CAP_KEY} is {env.get(STOP_CAP_KEY) or f'unset (default {DEFAULT_STOP_CAP})'}: Claude Code "
                   f"overrides the Stop hook after that many blocks, so the loop ends after ~"
                   f"{num(STOP_CAP_KEY) or DEFAULT_STOP_CAP} experiments")
    need = bash_timeout_ms(program)
    for key in TIMEOUT_KEYS:
        if num(key) < need:
            out.append(f"{key} is {env.get(key) or 'unset (default 120000)'}: one experiment may take {need} ms, "
                       "so the Bash call running it is cut off")
    return out


def write_plugin_settings(root: Path, program) -> tuple[Path, dict[str, str]]:
    """Merge the loop's env into .claude/settings.json (created if needed); returns what changed.
    Raises ValueError when the existing file is not valid JSON (nothing is written then)."""
    path = settings_path(root)
    settings = read_settings(path)
    env = settings.setdefault("env", {})
    changed = {}
    for key, want in loop_env(program).items():
        try:
            have = int(env.get(key) or 0)
        except (TypeError, ValueError):
            have = 0
        if have < int(want):
            env[key] = changed[key] = want
    if changed or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(settings, indent=2) + "\n")
    return path, changed


def init_plugin(path: str | None) -> int:
    """`init --plugin`: the project already has program.md; add only the env the plugin needs."""
    import sys

    from ..program import load_program
    root = Path(path or ".").resolve()
    try:
        written, changed = write_plugin_settings(root, load_program(root))
    except ValueError as e:
        print(f"autoresearch init --plugin: {e}", file=sys.stderr)
        return 2
    if changed:
        print(f"wrote {written}: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    else:
        print(f"{written} already has the Stop-block cap and the Bash timeout: nothing changed")
    return 0


# --- a full init from the installed plugin alone ---------------------------------------------------

def in_plugin_install(bundle: Path) -> bool:
    """The package runs from an installed plugin, not from a bundle checkout: Claude Code's plugin
    cache (<config>/plugins/cache/...), or a folder with the plugin manifest but no bundle .venv.
    init then wires the project for the plugin's own hooks instead of naming this folder's."""
    bundle = Path(bundle)
    if "plugins" in bundle.parts and "cache" in bundle.parts:
        return True
    return (bundle / ".claude-plugin" / "plugin.json").is_file() and not (bundle / ".venv").is_dir()


def plugin_project_settings(bundle: Path, bash_ms: int) -> dict:
    """.claude/settings.json for a plugin-only project: the bundle's permissions.deny and env (the
    Stop-block cap, the Bash timeout sized to one experiment) and NO hooks: the plugin's hooks act
    because the project wires none of its own. Raises ValueError when the plugin lacks its settings."""
    from .wiring import load_settings
    try:
        ours = load_settings(bundle)
    except (OSError, ValueError) as e:
        raise ValueError(f"the plugin at {bundle} has no readable .claude/settings.json ({e}): reinstall the "
                         "plugin (claude plugin install autoresearch@<marketplace>)") from None
    env = dict(ours.get("env") or {})
    env[STOP_CAP_KEY] = str(max(int(env.get(STOP_CAP_KEY, 0) or 0), STOP_CAP))
    for k in TIMEOUT_KEYS:
        env[k] = str(max(int(env.get(k, 0) or 0), bash_ms))
    return {"env": env, "permissions": {"deny": list((ours.get("permissions") or {}).get("deny") or [])}}


def training_python(root: Path, command: list[str]) -> str | None:
    """run.python for a plugin-only project (the plugin's own Python has no numpy or torch): the
    repo's .venv when it has one, else the interpreter its command names as found on PATH now."""
    import shutil
    for rel in (".venv/bin/python", "venv/bin/python"):
        if (Path(root) / rel).is_file():
            return rel
    word = command[0]
    found = (word if word.startswith("/") else shutil.which(word)) if Path(word).name.startswith("python") \
        else shutil.which("python3")
    return _interpreter(os.path.abspath(found)) if found else None


def _interpreter(found: str) -> str:
    """The interpreter a launcher runs (a pyenv or asdf shim is a script that picks one); a venv's
    bin/python stays as it is (sys.executable keeps the venv's path, and so its packages)."""
    import subprocess
    try:
        p = subprocess.run([found, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return found
    exe = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else ""
    return exe if exe.startswith("/") else found
