"""What a Ray task runs on the node that gets it: standard library only, shipped by value.

The head (rayexec.py) sends one package (tar.gz): `project/` (the committed tree at the run's base,
program.md as the head reads it, and runs/NNNN/ with the queued snapshot) and `harness/autoresearch/`
(the trusted package). Here, in a private temp folder (0700) of the node:

    1. `python prepare.py` in the project: the data through prepare.py's pinned, hash-checked cache
    2. `python -m autoresearch.run --execute NNNN`: the SAME two-stage sandboxed runner as a local
       slot, with PYTHONPATH at the shipped harness and XDG_CONFIG_HOME at a fresh folder beside the
       project (never mounted into the sandbox), so it signs with a key made for this task only
    3. back to the head: metrics.json as the runner wrote it, that one-task key (the head checks the
       signature with it, re-checks the record and re-signs it with the project's key, which never
       leaves the head), train.log / eval.log and out/ (the diff is made on the head, which has the history) up to `out_cap` bytes.

The runner is a child with PR_SET_PDEATHSIG: a worker killed with its node (or a cancelled task)
takes the runner down, and the runner's SIGTERM handler stops its sandbox.
"""
from __future__ import annotations

import ctypes
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

RESULT_FILES = ("train.log", "eval.log", "train.py")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG
    except OSError:
        pass


def _node_id() -> str:
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:                                   # noqa: BLE001 -- outside a Ray worker (tests)
        return "local"


def _results(run_dir: Path, out_cap: int) -> tuple[bytes, list[str]]:
    """The run's files for the head (tar.gz); out/ files past out_cap bytes are left, and named."""
    buf, left, used = io.BytesIO(), [], 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in RESULT_FILES:
            if (run_dir / name).is_file():
                tar.add(run_dir / name, arcname=name)
        out = run_dir / "out"
        for f in sorted(out.rglob("*")) if out.is_dir() else []:
            if not f.is_file() or f.is_symlink():
                continue
            size = f.stat().st_size
            if used + size > out_cap:
                left.append(str(f.relative_to(run_dir)))
                continue
            used += size
            tar.add(f, arcname=str(f.relative_to(run_dir)))
    return buf.getvalue(), left


def run_package(package: bytes, run_id: str, env: dict[str, str], out_cap: int) -> dict:
    """Unpack, prepare the data, run the two-stage runner; return what the head records."""
    work = Path(tempfile.mkdtemp(prefix="autoresearch-ray-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as tar:
            tar.extractall(work, filter="tar")    # our own package: links as committed
        proj, config = work / "project", work / "config"
        config.mkdir(mode=0o700)
        penv = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORESEARCH_", "RAY_"))}
        penv.update(env)
        penv.update(PYTHONPATH=str(work / "harness"), XDG_CONFIG_HOME=str(config), PYTHONDONTWRITEBYTECODE="1")
        prep = subprocess.run([sys.executable, "prepare.py"], cwd=proj, env=penv, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if prep.returncode != 0:
            raise RuntimeError(f"prepare.py failed on this node ({prep.returncode}): {prep.stderr[-800:]}")
        child = subprocess.Popen([sys.executable, "-m", "autoresearch.run", "--execute", run_id, "--slot", "0",
                                  "--slots", "1", "--here"], cwd=proj, env=penv, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            log, _ = child.communicate()
        except BaseException:                           # cancelled: stop the runner (it stops its sandbox)
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
        run_dir = proj / "runs" / run_id
        files, left = _results(run_dir, out_cap)
        keys = sorted((config / "autoresearch" / "keys").glob("*.key"))
        return {"node": _node_id(), "rc": child.returncode, "runner_log": log.decode(errors="replace")[-2000:],
                "metrics": (run_dir / "metrics.json").read_bytes() if (run_dir / "metrics.json").is_file() else None,
                "key": keys[0].read_bytes() if len(keys) == 1 else None, "files": files, "out_left": left}
    finally:
        shutil.rmtree(work, ignore_errors=True)
