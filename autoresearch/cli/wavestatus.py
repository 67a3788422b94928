"""The wave in flight, for `status` (and --json): each queued or running run, its slot (and node on
Ray), and elapsed / budget."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel


class WaveRun(BaseModel):
    run_id: str
    state: str                          # queued | running
    slot: int | None = None
    node: str | None = None
    elapsed_s: float | None = None      # since it started running
    budget_s: float                     # its training budget
    description: str = ""


def wave_in_flight(root: Path) -> list[WaveRun]:
    from ..record import live_entries
    now = datetime.now(timezone.utc)
    return [WaveRun(run_id=e.run_id, state=e.state, slot=e.slot, node=e.node, budget_s=e.budget_seconds,
                    elapsed_s=round((now - e.started_at).total_seconds(), 1) if e.started_at else None,
                    description=" ".join(e.message.split())[:70])
            for e in live_entries(root)]


def render_wave(wave: list[WaveRun]) -> "object":
    from rich.table import Table
    t = Table(title=f"wave in flight ({len(wave)} runs)", title_justify="left", show_edge=False)
    for col in ("run", "state", "slot", "node", "elapsed / budget", "description"):
        t.add_column(col)
    for w in wave:
        el = f"{w.elapsed_s:.0f} s / {w.budget_s:g} s" if w.elapsed_s is not None else f"- / {w.budget_s:g} s"
        t.add_row(w.run_id, w.state, "-" if w.slot is None else str(w.slot), w.node or "local", el, w.description,
                  style="cyan" if w.state == "running" else "")
    return t
