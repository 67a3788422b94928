"""One row of `autoresearch doctor`: what a check found and, when it is not ok, the fix.

Its own module so the checks that live beside doctor (envcheck.py, canary.py) and doctor itself,
which runs them, all import it and not each other.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Level = Literal["ok", "warn", "fail", "info"]


class Check(BaseModel):
    name: str
    level: Level
    found: str
    fix: str = ""
