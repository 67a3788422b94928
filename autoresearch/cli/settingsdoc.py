"""README's program.md settings reference, generated from the pydantic models (a cog block), so each
setting's type and default live in one place, program/sections.py, and the README cannot drift.

The text of a row is the field's own comment in the model's source (or the comment lines above it),
the same words a reader of sections.py sees.
"""
from __future__ import annotations

import inspect
import re
import typing

from pydantic import BaseModel

from ..program import Program

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """field -> its trailing comment, else the comment lines just above it, from the class source."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(model).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = _FIELD.match(line)
        if m and m.group(1) in model.model_fields:
            tail = (m.group(2) or "").split("# type: ignore")[0].split("type: ignore")[0].strip()
            out[m.group(1)] = tail or " ".join(above)
        above = []
    return out


def _type(annotation) -> str:
    text = str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    return re.sub(r"typing\.|autoresearch\.[\w.]+\.|<class '(\w+)'>", lambda m: m.group(1) or "", text)


def _default(field) -> str:
    if field.is_required():
        return "required"
    d = field.get_default(call_default_factory=True)
    if isinstance(d, BaseModel):
        return "see below"
    if isinstance(d, list) and d and isinstance(d[0], BaseModel):
        return ", ".join(f"`{x.model_dump(exclude_defaults=True)}`" for x in d).replace("|", "\\|")
    return "unset" if d is None else f"`{d!r}`".replace("|", "\\|")


def _rows(model: type[BaseModel], prefix: str, nested: list) -> list[str]:
    notes = _comments(model)
    rows = []
    for name, f in model.model_fields.items():
        if name == "body":                        # the prose below the front matter, not a setting
            continue
        inner = [a for a in (f.annotation, *typing.get_args(f.annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:
            nested.append((inner[0], f"{prefix}{name}" + ("[]" if typing.get_origin(f.annotation) is list else "")))
        text = (notes.get(name) or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type(f.annotation).replace('|', chr(92) + '|')} | {_default(f)} | {text} |")
    return rows


def settings_markdown() -> str:
    """Every program.md setting: key, type, default and what it is for, section by section."""
    nested: list = []
    out = ["| setting | type | default | what it is for |", "|---|---|---|---|"]
    out += _rows(Program, "", nested)
    seen = set()
    while nested:
        model, key = nested.pop(0)
        if model in seen:
            continue
        seen.add(model)
        out += _rows(model, key + ".", nested)
    return "\n".join(out) + "\n"
