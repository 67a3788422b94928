"""Atomic file writes: a reader (or a hook killed halfway) never sees a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target (with `mode`, if given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def set_aside(path: Path) -> Path:
    """Move a damaged file out of the way, kept (never deleted): `<name>.corrupt-<UTC time>` next to
    it. Returns where it went (the same path when it could not be moved)."""
    from datetime import datetime, timezone
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target, i = path.with_name(f"{path.name}.corrupt-{stamp}"), 2
    while target.exists():
        target, i = path.with_name(f"{path.name}.corrupt-{stamp}-{i}"), i + 1
    try:
        os.replace(path, target)
    except OSError:
        return path
    return target
