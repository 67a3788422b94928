"""`autoresearch doctor`'s checks of the repo's own environment (program.md's run.python,
run.env and mounts): the interpreter runs and imports torch, the mounts can be read, and which
run.env entries replace a harness default (the number may then differ from a run without it)."""
from __future__ import annotations

import os
from pathlib import Path

from ..hostenv import ENV_DEFAULTS, run_python
from ..program import Program
from ..run.interpreter import InterpreterError, probe, torch_version
from .doctor import Check


def check_interpreter(root: Path, program: Program | None) -> Check:
    """run.python starts, says its version, and imports torch (the model server needs it)."""
    py = None if program is None else run_python(root, program.run.python)
    if py is None:
        return Check(name="run.python", level="info", found="unset: both stages run the harness's own Python")
    try:
        interp = probe(py)
    except InterpreterError as e:
        return Check(name="run.python", level="fail", found=str(e),
                     fix="recreate the env (python -m venv --system-site-packages .venv), or fix run.python")
    tv = torch_version(interp.path)
    if tv is None:
        return Check(name="run.python", level="fail", found=f"{py}: Python {interp.version}, cannot import torch",
                     fix=f"{py} -m pip install torch numpy (the EVAL model server runs under it)")
    return Check(name="run.python", level="ok",
                 found=f"{py}: Python {interp.version} (prefix {interp.prefix}), torch {tv}")


def check_mounts(root: Path, program: Program | None) -> list[Check]:
    """Each declared mount exists and can be read; run.env entries that replace a harness default."""
    if program is None:
        return []
    out = []
    for m in program.mounts:
        p = Path(m.path)
        ok = p.exists() and os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0))
        out.append(Check(name=f"mount {m.path}", level="ok" if ok else "fail",
                         found=f"read-only in {', '.join(m.stages)}" if ok else "missing or not readable",
                         fix="" if ok else f"create it or chmod o+rX {m.path} (the sandbox runs as another user)"))
    if over := sorted(set(program.run.env) & ENV_DEFAULTS):
        out.append(Check(name="run.env", level="warn", found=f"replaces the harness's {', '.join(over)}",
                         fix="keep it only if the repo needs it: runs before and after are then not alike"))
    return out


def check_eval(root: Path, program: Program | None) -> list[Check]:
    """eval.files are committed at the base commit (they run from there, never from the work tree),
    and a work tree copy that differs is said (it is not what runs)."""
    if program is None or program.eval is None:
        return []
    from ..gitops import base_commit, show_blob
    base = base_commit(root)
    if base is None:
        return [Check(name="eval.files", level="fail", found="no commit yet: the eval script runs as committed",
                      fix=f"git add {' '.join(program.eval.files)} && git commit")]
    out = []
    for f in program.eval.files:
        committed = show_blob(root, base, f)
        if committed is None:
            out.append(Check(name=f"eval.files {f}", level="fail", found=f"not committed at the base commit {base[:12]}",
                             fix=f"git add {f} && git commit (the eval script runs as committed, never from the work tree)"))
            continue
        here = (root / f).read_bytes() if (root / f).is_file() else None
        same = here == committed
        out.append(Check(name=f"eval.files {f}", level="ok" if same else "warn",
                         found=f"frozen at {base[:12]}" + ("" if same else
                               "; the work tree's copy differs (the committed one runs)" if here is not None else
                               "; missing from the work tree (runs refuse to start)"),
                         fix="" if same else f"git checkout {base[:12]} -- {f}, or commit the new version"))
    return out
