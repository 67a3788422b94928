"""What one night of `autoresearch overnight` is, as the parts that serve it see it: its saved
state (OvernightState, .autoresearch/overnight.json) and NightView, the members of overnight.Night
that a session (headless.py) and the end-of-night message (notify.py) use -- so they need not
import the night's loop, which imports them.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from ..program import Program


class OvernightState(BaseModel):
    session_id: str | None = None
    started_at: datetime
    deadline: datetime
    sessions: int = 0                  # connections made (first start + resumes)
    errors: int = 0                    # sessions that ended in an error and were resumed
    turns: int = 0                     # assistant messages seen
    tool_calls: int = 0
    cost_usd: float = 0.0
    last_action: str = ""
    status: str = "running"            # running | done | deadline | interrupted | failed | fatal
    reason: str = ""
    experiments_at_start: int = 0


class NightView(Protocol):
    """overnight.Night, as headless.py and notify.py use it."""
    root: Path
    program: Program
    state: OvernightState
    model: str | None
    cli_path: str | None
    env: dict[str, str]
    plugin: str | None
    fatal: str | None

    def log(self, kind: str, text: str) -> None: ...
    def log_decisions(self) -> None: ...
    def save(self) -> None: ...
    def best(self) -> float | None: ...
    def experiments(self) -> int: ...
