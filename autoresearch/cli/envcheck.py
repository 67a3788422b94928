"""`autoresearch doctor`'s checks of the repo's own environment (program.md's run.python,
run.env and mounts): the interpreter runs and imports torch, the mounts can be read, and which
run.env entries replace a harness default (the number may then differ from a run without it)."""
from __future__ import annotations

import os
from pathlib import Path

from ..hostenv import ENV_DEFAULTS, run_python
from ..program import Program
from ..registry import EXECUTORS, evaluator, executor_module, remote
from ..run import InterpreterError, probe, torch_version
from .checks import Check


def check_interpreter(root: Path, program: Program | None) -> Check:
    """run.python starts, says its version, and imports torch when the model server runs under it
    (two_stage mode; inline and eval_command run only the repo's own code with it)."""
    py = None if program is None else run_python(root, program.run.python)
    if py is None:
        return Check(name="run.python", level="info", found="unset: both stages run the harness's own Python")
    try:
        interp = probe(py)
    except InterpreterError as e:
        return Check(name="run.python", level="fail", found=str(e),
                     fix="recreate the env (python -m venv --system-site-packages .venv), or fix run.python")
    tv = torch_version(interp.path)
    if tv is None and not evaluator(program.run.mode).data:     # no model server of ours runs under it
        return Check(name="run.python", level="ok", found=f"{py}: Python {interp.version} (prefix {interp.prefix}); "
                                                          f"no torch, which {program.run.mode} mode does not need")
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
    if program.eval.model is not None:
        out.append(_check_model_entry(root, program.eval.model))
    return out


def _check_model_entry(root: Path, entry: str) -> Check:
    """eval.model names a file of the work tree that defines that function at its top level (the
    model server imports the file and calls it; a typo would make every run `invalid`)."""
    import ast
    rel, func = entry.split(":")
    name, path = f"eval.model {entry}", root / rel
    if not path.is_file():
        return Check(name=name, level="fail", found=f"no file {rel} in the project",
                     fix=f"create {rel} with def {func}(out_dir): ... returning predict, or fix eval.model")
    try:
        tree = ast.parse(path.read_bytes(), filename=rel)
    except (SyntaxError, ValueError) as e:
        return Check(name=name, level="fail", found=f"{rel} does not parse: {e}", fix=f"fix {rel}")
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for n in tree.body:
        if isinstance(n, (ast.Assign, ast.AnnAssign)):
            defined |= {t.id for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in n.names}
    if func not in defined:
        return Check(name=name, level="fail", found=f"{rel} defines no {func} at its top level",
                     fix=f"add def {func}(out_dir) to {rel} (it returns the predict function), or fix eval.model")
    return Check(name=name, level="ok", found=f"{rel} defines {func}")


def check_home_cache(root: Path, program: Program | None) -> list[Check]:
    """sandbox.home can be read, sandbox.cache written, and neither writable one holds the prepared
    data (the run would refuse it); the cache's reach is said (README: threat model)."""
    if program is None:
        return []
    sb, out = program.sandbox, []
    try:
        from ..run import data_folder
        data: Path | None = data_folder(root)
    except Exception:                    # no data yet: check_data says so
        data = None
    for name, path, writable in (("sandbox.home", sb.home, sb.home_writable), ("sandbox.cache", sb.cache, True)):
        if path is None:
            if name == "sandbox.home":
                out.append(Check(name=name, level="info", found="unset: each run gets a fresh, empty HOME"))
            continue
        p = Path(path).resolve()
        need = os.R_OK | os.X_OK | (os.W_OK if writable else 0)
        if not (p.is_dir() and os.access(p, need)):
            out.append(Check(name=name, level="fail", found=f"{path}: missing or not {'writable' if writable else 'readable'}",
                             fix=f"mkdir -p {path} && chmod u+rwX {path}"))
        elif writable and data is not None and (p == data or p in data.parents or data in p.parents):
            out.append(Check(name=name, level="fail", found=f"{path} holds the prepared data ({data})",
                             fix="name a folder beside the data (a run refuses a writable folder holding it)"))
        else:
            reach = ("writable in TRAIN, EVAL gets a fresh HOME" if name == "sandbox.home" and writable
                     else "read-only in TRAIN and EVAL" if name == "sandbox.home"
                     else "writable in TRAIN, kept between runs; " + (
                         "EVAL and final read it" if sb.cache_eval else "not shown to EVAL"))
            out.append(Check(name=name, level="ok", found=f"{path}: {reach}"))
    return out


def check_executor(root: Path, program: Program | None) -> Check | list[Check]:
    """Who runs a wave: local slots, or a Ray cluster that must be importable and reachable (a
    cluster that is down once hung every queued run; now each is interrupted at once, with this fix)."""
    if program is None:
        return []
    ex = program.executor
    if not remote(ex.kind):
        return Check(name="executor", level="info", found=f"local: {ex.slots or 'one per GPU (else 1)'} slot(s) "
                     "for waves (./run.sh -m ... --queue)")
    import importlib.util
    mod = executor_module(ex.kind)                # HINT, UNREACHABLE_FIX, unreachable(address)
    if (need := EXECUTORS[ex.kind]["needs"]) and importlib.util.find_spec(need) is None:
        return Check(name="executor", level="fail", found=f"kind: {ex.kind}, but {need.capitalize()} is not installed here",
                     fix=mod.HINT)
    if why := mod.unreachable(ex.address):
        return Check(name="executor", level="fail", found=why, fix=mod.UNREACHABLE_FIX)
    return Check(name="executor", level="ok", found=f"kind: {ex.kind} at {ex.address or 'auto'}; resources per run "
                 f"{ex.resources or {'GPU': 1}}")
