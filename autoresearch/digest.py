"""sha256, one way: of bytes (None stays None, for a file absent at a commit) and of a file."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_bytes(data: bytes | None) -> str | None:
    """Hex sha256 of `data`, or None when there is no data (a file absent at a commit)."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str | None:
    """Hex sha256 of a file's bytes, or None when it does not exist."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
