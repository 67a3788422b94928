"""run.python: the repo's own interpreter (its venv or conda env) for TRAIN and the EVAL model
server. Asked on the host once per run what it is (version, prefix, the base it links to); its
prefixes are mounted read-only at their host paths so it runs in the sandbox as on the host."""
from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..hostenv import run_python
from ..program import Program
from ..sandbox import Backend, Mount

_PROBE = ("import json, sys; print(json.dumps({'version': sys.version.split()[0], 'prefix': sys.prefix, "
          "'base_prefix': sys.base_prefix, 'executable': sys.executable}))")
_TORCH = "import torch; print(torch.__version__)"


class InterpreterError(RuntimeError):
    """run.python cannot run; the message names the fix."""


@dataclass(frozen=True)
class Interpreter:
    path: str                 # as the sandbox runs it (the venv's bin/python, not the resolved binary)
    version: str
    prefix: str
    base_prefix: str

    @property
    def identity(self) -> str:
        """For the fingerprint: runs under two environments are never compared."""
        return f"{self.path} {self.version}"


@functools.lru_cache(maxsize=8)
def probe(python: Path, timeout: float = 60) -> Interpreter:
    """Run the interpreter on the host: it must start and say what it is (once per process)."""
    try:
        p = subprocess.run([str(python), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InterpreterError(f"run.python {python} does not run: {e}") from None
    if p.returncode != 0:
        raise InterpreterError(f"run.python {python} does not run (exit {p.returncode}): {p.stderr.strip()[-300:]}")
    try:
        info = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InterpreterError(f"run.python {python} is not a Python interpreter: it printed {p.stdout[:200]!r}") \
            from None
    return Interpreter(path=str(python), version=info["version"], prefix=info["prefix"],
                       base_prefix=info["base_prefix"])


def torch_version(python: str, timeout: float = 120) -> str | None:
    """torch's version under that interpreter, or None when it cannot import torch."""
    try:
        p = subprocess.run([python, "-c", _TORCH], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else None


def resolve(root: Path, program: Program) -> Interpreter | None:
    """program.md's run.python, probed; None: the harness's own Python (the backend's runtime)."""
    py = run_python(root, program.run.python)
    return None if py is None else probe(py)


def interpreter_mounts(interp: Interpreter, backend: Backend, root: Path) -> list[Mount]:
    """The interpreter's prefix and base prefix, at their given and real paths, read-only; not
    those the project or the backend's runtime already shows (a .venv inside the project)."""
    if not backend.runtime().mounts:
        raise InterpreterError(
            f"run.python ({interp.path}) is a host interpreter, and the docker image {backend.describe()} runs its "
            f"own Python: use sandbox.backend: bwrap, or a sandbox.image that is not built (the local image "
            f"bind-mounts the host's)")
    shown = [Path(m.target) for m in backend.runtime().mounts] + [Path(root).resolve(), Path(root)]
    out: list[Mount] = []
    for p in dict.fromkeys(Path(x) for d in (interp.prefix, interp.base_prefix, str(Path(interp.path).parent))
                           for x in (d, str(Path(d).resolve()))):
        if not p.exists() or any(p == s or s in p.parents for s in shown + [Path(m.target) for m in out]):
            continue
        out.append(Mount(p.resolve(), str(p)))
    return out
