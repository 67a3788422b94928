"""The fail-safe runner shared by the loop's hook entries (stop.py, session_start.py,
pre_compact.py). Stdlib only, so it still answers when the package or its dependencies cannot
be imported. Only the Stop hook counts consecutive errors (.autoresearch/hook-errors.count)."""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent                       # the folder holding autoresearch/ (project or plugin)
ERRORS_LOG = "hook-errors.log"
ERRORS_COUNT = "hook-errors.count"


def project_dir(data: dict) -> Path:
    return Path(os.environ.get("CLAUDE_PROJECT_DIR") or data.get("cwd") or os.getcwd())


def log_error(root: Path, event: str, exc: BaseException, count: bool = True) -> int:
    """Append the traceback to .autoresearch/hook-errors.log; return the consecutive error count."""
    d = root / ".autoresearch"
    try:
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ERRORS_LOG, "a", encoding="utf-8") as f:
            f.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {event}\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        if not count:
            return 1
        try:
            n = int((d / ERRORS_COUNT).read_text().strip() or 0) + 1
        except (OSError, ValueError):
            n = 1
        (d / ERRORS_COUNT).write_text(f"{n}\n")
        return n
    except OSError:
        return 1


def clear_errors(root: Path) -> None:
    try:
        (root / ".autoresearch" / ERRORS_COUNT).unlink()
    except OSError:
        pass


class HookTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise HookTimeout("the hook ran out of time (a git command or lock hung?)")


def run(event: str, handler_name: str, on_error, count_errors: bool = False) -> None:
    """Read the hook JSON from stdin, call autoresearch.loop.<handler_name>(data), print its reply.
    Any failure becomes `on_error(root, exc, consecutive_errors)`'s reply. Always exits 0."""
    data: dict = {}
    root = project_dir(data)
    try:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(os.environ.get("AUTORESEARCH_HOOK_SECONDS", "100")))
        raw = sys.stdin.read()
        data = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("hook input is not a JSON object")
        root = project_dir(data)
        sys.path.insert(0, str(PACKAGE_ROOT))
        from autoresearch import loop
        reply = getattr(loop, handler_name)(data)
        signal.alarm(0)
        if count_errors:
            clear_errors(root)
    except BaseException as e:                  # noqa: BLE001 -- every failure must become a reply
        signal.alarm(0)
        n = log_error(root, event, e, count_errors)
        reply = on_error(root, e, n)
    sys.stdout.write(json.dumps(reply or {}) + "\n")
    sys.stdout.flush()
    os._exit(0)
