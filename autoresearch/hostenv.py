"""The repo's own environment, as program.md declares it: run.python (its venv or conda env),
run.env (variables for both stages) and mounts (host folders outside the project, read-only,
per stage). The schema pieces program.py uses, and the checks that need the project's path.
A leaf: no imports from the package, so program.py, run/ and cli/ can all use it."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by the harness or the sandbox: a run.env entry may not replace them (the fix is named).
ENV_RESERVED = {"PATH": "the sandbox sets it from the interpreter", "HOME": "use sandbox.home",
                "PYTHONPATH": "the harness sets it: list the repo's own source folders in run.source_roots",
                "PYTHONHOME": "use run.python for another interpreter",
                "LD_PRELOAD": "not allowed", "LD_AUDIT": "not allowed", "LD_LIBRARY_PATH": "not allowed",
                "CUDA_VISIBLE_DEVICES": "use sandbox.gpus", "TMPDIR": "the sandbox's /tmp is private"}
# Harness defaults a run.env entry may replace (doctor warns: the number may then differ).
ENV_DEFAULTS = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "LANG", "MPLBACKEND", "PYTHONUNBUFFERED",
                "PYTHONDONTWRITEBYTECODE", "CUBLAS_WORKSPACE_CONFIG", "USER", "LOGNAME"}

Stage = Literal["train", "eval", "final"]
# Never mounted: credentials (the guard keeps the agent out of the same folders) and the system's own.
_SECRET_PARTS = {".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", ".password-store", ".secrets", ".claude"}
_SECRET_CONFIG = {"gcloud", "gh", "autoresearch"}           # under ~/.config
_SYSTEM = {"/", "/etc", "/proc", "/sys", "/dev", "/root", "/home", "/run", "/var", "/boot", "/usr", "/bin",
           "/lib", "/tmp", "/opt"}


def check_env(v: Any) -> Any:
    """run.env as name -> string; numbers become strings (YAML reads `OMP_NUM_THREADS: 4` as 4)."""
    if not isinstance(v, dict):
        raise ValueError("give a mapping of names to values, such as {WANDB_MODE: offline, HF_HOME: /data/hf}")
    out = {}
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise ValueError(f"{k!r} is not a variable name (letters, digits and _, not starting with a digit)")
        if k in ENV_RESERVED or k.startswith("AUTORESEARCH_"):
            raise ValueError(f"{k} cannot be set here ({ENV_RESERVED.get(k, 'the harness sets its own variables')})")
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            val = str(val)
        if not isinstance(val, str):
            raise ValueError(f"{k}: {val!r} is not a string: quote it ({k}: \"{val}\")")
        if "\n" in val or "\0" in val:
            raise ValueError(f"{k}: a value may not hold a newline or NUL")
        out[k] = val
    return out


def check_python(v: Any) -> Any:
    """run.python: the repo's venv (relative to the project) or an absolute path; on disk at load."""
    if v is None:
        return v
    if not isinstance(v, str) or not v.strip() or "\n" in v or "\0" in v:
        raise ValueError("give the interpreter's path, such as .venv/bin/python or /opt/conda/envs/clip/bin/python")
    if not v.startswith("/") and ".." in Path(v).parts:
        raise ValueError(f"{v!r}: a relative path is inside the project, without '..' (else write an absolute one)")
    return v


class HostMount(BaseModel):
    """A host folder shown read-only in the named stages only: training data to [train], held-out
    data to [eval] or [final] (`autoresearch final`). Symlinks in the project into it then resolve."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str                                    # an absolute host folder, outside the project
    stages: list[Stage] = Field(min_length=1)    # the stages that see it: train, eval, final

    _usable = field_validator("path")(lambda cls, v: check_folder(v))


def check_folder(v: Any, example: str = "/data/imagenet", folder: bool = False) -> str:
    """A host folder to show in the sandbox (mounts:, sandbox.home, sandbox.cache): absolute,
    without '..', on disk, neither a system folder nor a credentials one. One checker for all."""
    if not isinstance(v, str):
        raise ValueError(f"{v!r}: give an absolute path, such as {example}")
    p = Path(v)
    if not v.startswith("/") or ".." in p.parts:
        raise ValueError(f"{v!r}: give an absolute path without '..', such as {example}")
    real = Path(os.path.realpath(v))
    if os.path.normpath(v) in _SYSTEM or str(real) in _SYSTEM:
        raise ValueError(f"{v}: a system folder is never mounted: name the folder itself, such as {example}")
    parts = set(real.parts) | set(p.parts)
    if parts & _SECRET_PARTS or (".config" in parts and _SECRET_CONFIG & parts):
        raise ValueError(f"{v}: a credentials folder is never mounted into the sandbox: name another folder")
    if not p.exists():
        raise ValueError(f"{v} does not exist: create it (mkdir -p {v}) or fix the path")
    if folder and not p.is_dir():
        raise ValueError(f"{v} is not a folder: name a folder")
    return os.path.normpath(v)


def run_python(root: Path, python: str | None) -> Path | None:
    """run.python as an absolute path (a relative one is the project's), or None: the harness's own."""
    return None if python is None else Path(python) if python.startswith("/") else Path(root) / python


def host_path_errors(root: Path, python: str | None, mounts: list[HostMount],
                     folders: dict[str, str | None] | None = None) -> list[str]:
    """What needs the project to check: run.python exists and is executable; a mount (and each of
    `folders`, such as sandbox.home) is neither inside the project (shown already; a writable one
    would let a run change it) nor around it (the val/test split would show in TRAIN)."""
    errs = []
    py = run_python(root, python)
    if py is not None and not (py.is_file() and os.access(py, os.X_OK)):
        errs.append(f"run.python: {py} is not an executable file: create the env "
                    f"(python -m venv --system-site-packages .venv) or fix the path")
    real = Path(root).resolve()
    named = [(f"mounts.{i}.path", m.path) for i, m in enumerate(mounts)]
    named += [(k, v) for k, v in (folders or {}).items() if v is not None]
    for field, path in named:
        mp = Path(path).resolve()
        if mp == real or real in mp.parents or mp in real.parents:
            where = "around" if mp in real.parents else "inside"
            errs.append(f"{field}: {path} is {where} the project: the project is mounted already; "
                        f"name a folder outside it")
    return errs


def stage_mounts(mounts: list[HostMount], stage: str) -> list[Path]:
    """The declared folders one stage sees (its given path; a symlinked one also at its real path)."""
    out: list[Path] = []
    for m in mounts:
        if stage in m.stages:
            out += [Path(m.path), Path(os.path.realpath(m.path))]
    return list(dict.fromkeys(out))
