#!/usr/bin/env python3
"""Claude Code Stop hook: decide the experiment that just ran, record it, and send the agent on.

Logic lives in autoresearch.loop.stop_hook. This entry guarantees a defined outcome: letting a
stop through ends the overnight loop, so an internal error BLOCKS with a short, actionable
message (traceback in .autoresearch/hook-errors.log) -- until AUTORESEARCH_MAX_HOOK_ERRORS
(default 10) consecutive errors, when it lets the stop through and tells the human why. A full or
read-only disk is not retried: no turn of the agent's can fix it, so the stop goes through at once.
"""
import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loop_hook import run  # noqa: E402


def on_error(root, exc, n):
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        # no retry by the agent can free a disk: stop once, with the human's fix
        return {"systemMessage": f"autoresearch: the loop stopped: the disk cannot be written ({first}). Nothing was "
                                 f"decided and nothing is lost. A human must free space (or fix the mount), "
                                 f"then start the agent again."}
    if isinstance(exc, ImportError):
        plugin = os.environ.get("CLAUDE_PLUGIN_ROOT")
        fix = (f"{plugin}/scripts/plugin-deps.sh with CLAUDE_PLUGIN_DATA set" if plugin and
               os.path.abspath(__file__).startswith(os.path.abspath(plugin)) else "scripts/bootstrap.sh")
        first = (f"{first}. The hooks' Python looks incomplete: a human must run {fix} (the guard denies "
                 f"everything until then)")
    try:
        limit = int(os.environ.get("AUTORESEARCH_MAX_HOOK_ERRORS", "10"))
    except ValueError:
        limit = 10
    if n > limit:
        return {"systemMessage": f"autoresearch: the Stop hook failed {n} times in a row, so the loop stopped. "
                                 f"Last error: {first}. Details: {root}/.autoresearch/hook-errors.log"}
    return {"decision": "block",
            "reason": f"autoresearch: the Stop hook hit an error, so nothing was decided yet and nothing is lost: "
                      f"{first}. Do not work around it; end your turn again (it retries). "
                      f"Details: .autoresearch/hook-errors.log"}


if __name__ == "__main__":
    run("Stop", "stop_hook", on_error, count_errors=True)
