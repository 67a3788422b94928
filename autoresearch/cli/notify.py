"""The end-of-night message of `autoresearch overnight`: program.md's optional `notify:` (a command
that gets the summary on stdin and in the environment, a webhook that gets it as JSON), sent by the
driver once the night is over."""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nightstate import NightView as Night


def summary(night: "Night") -> str:
    st = night.state
    best = night.best()
    best_txt = f"best {night.program.metric.name} {best:.6f}" if best is not None else "no best yet"
    return (f"autoresearch overnight in {night.root}: {st.status}: {st.reason}. "
            f"{night.experiments() - st.experiments_at_start} experiments tonight, {best_txt}; "
            f"{st.sessions} session(s), {st.errors} error(s) resumed, ${st.cost_usd:.2f}.")


def notify(night: "Night") -> None:
    """program.md's `notify:` (trusted: the guard keeps the agent out of program.md). A failure
    is logged and never changes how the night ended."""
    n = night.program.notify
    if n is None:
        return
    import subprocess
    import urllib.request
    text = summary(night)
    if n.command:
        env = {**os.environ, "AUTORESEARCH_STATUS": night.state.status, "AUTORESEARCH_REASON": night.state.reason,
               "AUTORESEARCH_SUMMARY": text, "AUTORESEARCH_PROJECT": str(night.root)}
        try:
            p = subprocess.run(["/bin/sh", "-c", n.command], input=text, text=True, cwd=night.root, env=env,
                               capture_output=True, timeout=n.timeout_seconds)
            night.log("notify", f"command exited {p.returncode}"
                               + (f": {(p.stderr or p.stdout).strip()[:200]}" if p.returncode else ""))
        except (OSError, subprocess.TimeoutExpired) as e:
            night.log("notify", f"command failed: {e}")
    if n.webhook:
        body = json.dumps({"text": text, "status": night.state.status, "reason": night.state.reason,
                           "project": str(night.root)}).encode()
        req = urllib.request.Request(n.webhook, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=n.timeout_seconds) as r:
                night.log("notify", f"webhook answered {r.status}")
        except Exception as e:            # noqa: BLE001 - a log line, never a crash at the end
            night.log("notify", f"webhook failed: {e}")
