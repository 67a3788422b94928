"""What a Ray task runs on the node that gets it: standard library only, shipped by value.

The head (rayexec.py) sends two packages (tar.gz): the base, `project/` (the committed tree at the
run's base) and `harness/autoresearch/` (the trusted package), the same for every run of that base
(one object in the cluster's store); and the run's overlay, `overlay/` (program.md as the head reads
it, runs/NNNN/ with the queued snapshot). Here, in a private temp folder (0700) of the node:

    0. the project is committed (one commit, `git init` there) before program.md and runs/NNNN/
       go on top: the work copies hold its tracked files and the frozen eval.files are read from
       it, as on the head (whose base commit it mirrors byte for byte)
    1. `python prepare.py` in the project, when it has one: the data through its pinned, hash-checked cache
    2. `python -m autoresearch.run --execute NNNN`: the SAME two-stage sandboxed runner as a local
       slot, with PYTHONPATH at the shipped harness and XDG_CONFIG_HOME at a fresh folder beside the
       project (never mounted into the sandbox), so it signs with a key made for this task only
    3. back to the head: metrics.json as the runner wrote it, that one-task key (the head checks the
       signature with it, re-checks the record and re-signs it with the project's key, which never
       leaves the head), train.log / eval.log and out/ (the diff is made on the head, which has the history) up to `out_cap` bytes.

The runner is a child with PR_SET_PDEATHSIG: a worker killed with its node (or a cancelled task)
takes the runner down, and the runner's SIGTERM handler stops its sandbox. A cancelled task
(KeyboardInterrupt in it) stops the runner and removes its folder; what a worker killed outright
leaves behind, the node's next task removes (`sweep`: the folder's flock is free).
"""
from __future__ import annotations

import ctypes
import fcntl
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator

RESULT_FILES = ("train.log", "train.py")
EVAL_LOG = "eval.log"          # from the runner's state folder (the node's `state/`), never from runs/


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG
    except OSError:
        pass


def _node_id(what: str = "node") -> str:
    """This worker's node id (or, `what="job"`, the id of the job, i.e. the driver, that submitted it)."""
    try:
        import ray
        ctx = ray.get_runtime_context()
        return ctx.get_job_id() if what == "job" else ctx.get_node_id()
    except Exception:                                   # noqa: BLE001 -- outside a Ray worker (tests)
        return "local"


def _results(run_dir: Path, out_cap: int, state: Path | None = None) -> tuple[bytes, list[str]]:
    """The run's files for the head (tar.gz); out/ files past out_cap bytes are left, and named.
    The eval log comes from the runner's state folder (`state`), outside the project."""
    buf, left, used = io.BytesIO(), [], 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in RESULT_FILES:
            if (run_dir / name).is_file():
                tar.add(run_dir / name, arcname=name)
        for log in sorted(state.glob(f"projects/*/logs/{run_dir.name}/{EVAL_LOG}")) if state else []:
            if log.is_file() and not log.is_symlink():
                tar.add(log, arcname=EVAL_LOG)
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


def _commit(proj: Path) -> None:
    """The shipped base as one commit of a fresh repository, byte for byte: objects written with
    --no-filters and the index built from them (a `git add` would apply the project's own
    .gitattributes: eol, ident), no hooks, no user config read."""
    git = ["git", "-c", "core.hooksPath=/dev/null", "-c", "user.name=autoresearch",
           "-c", "user.email=autoresearch@localhost", "-c", "commit.gpgsign=false"]
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

    def run(*args: str, stdin: str | None = None) -> str:
        r = subprocess.run([*git, *args], cwd=proj, env=env, capture_output=True, text=True, input=stdin,
                           stdin=None if stdin is not None else subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"git {args[0]} on this node failed ({r.returncode}): {r.stderr[-400:]}")
        return r.stdout

    run("init", "-q", "-b", "autoresearch-node")
    files, links = [], []
    for d, dirs, names in os.walk(proj):               # links to folders are listed, never entered
        if d == str(proj):
            dirs[:] = [n for n in dirs if n != ".git"]
        for n in dirs + names:
            path = os.path.join(d, n)
            if os.path.islink(path):
                links.append(path)
            elif n in names:
                files.append(path)
    index = []
    if files:
        shas = run("hash-object", "-w", "--no-filters", "--stdin-paths", stdin="\n".join(files) + "\n").split()
        index += [(("100755" if os.access(f, os.X_OK) else "100644"), sha, f) for f, sha in zip(files, shas)]
    for f in links:
        index.append(("120000", run("hash-object", "-w", "--no-filters", "--stdin", stdin=os.readlink(f)).strip(), f))
    if index:
        run("update-index", "--add", "--index-info",
            stdin="".join(f"{m} {sha}\t{os.path.relpath(f, proj)}\n" for m, sha, f in index))
    run("commit", "-q", "--allow-empty", "--no-verify", "-m", "the run's base, shipped from the head")


def run_package(base: bytes, overlay: bytes, run_id: str, env: dict[str, str], out_cap: int) -> Iterator[dict]:
    """A streaming task: first {"node": id} (the head shows where the run is while it runs), then,
    having unpacked, prepared the data and run the two-stage runner, what the head records."""
    yield {"node": _node_id()}
    yield _run((base, overlay), run_id, env, out_cap)


POLL_S = 0.2                 # the task waits in Python, so a cancel (KeyboardInterrupt) lands at once


def _child(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run argv to its end (output to `log`), its exit code and output. Ray delivers a cancel as an
    exception between bytecodes, never inside a blocking wait: so poll; on it, stop the child (the
    runner's SIGTERM handler stops its sandbox) and let the exception through."""
    with open(log, "wb") as out:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    try:
        while child.poll() is None:
            time.sleep(POLL_S)
    except BaseException:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    return child.returncode, log.read_text(errors="replace")


PREFIX = "autoresearch-ray-"
LOCK = ".held"               # flocked for the task's life: a folder whose lock is free is litter
STALE_S = 600                # a folder with no lock file yet is litter only when older than this


def _remove(path: Path) -> None:
    """rmtree that gets through folders agent code made unreadable (chmod 000), links never followed."""
    for d, dirs, _ in os.walk(path, onerror=lambda e: None):
        for n in dirs:
            q = os.path.join(d, n)
            if not os.path.islink(q):
                try:
                    os.chmod(q, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


def sweep(tmp: Path) -> list[str]:
    """Remove what tasks killed with their worker (a force cancel, a lost node) left in tmp: their
    unpacked project, checkpoint and task key. A live task holds its folder's lock."""
    gone = []
    for d in tmp.glob(PREFIX + "*"):
        try:
            fd = os.open(d / LOCK, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                if time.time() - d.stat().st_mtime > STALE_S:
                    _remove(d)
                    gone.append(d.name)
            except OSError:
                pass
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue                                    # a live task's
        finally:
            os.close(fd)
        _remove(d)
        gone.append(d.name)
    return gone


def _run(packages: tuple[bytes, ...], run_id: str, env: dict[str, str], out_cap: int) -> dict:
    tmp = Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix=PREFIX, dir=tmp))
    held = os.open(work / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    sweep(tmp)
    try:
        for package in packages:
            with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as tar:
                tar.extractall(work, filter="tar")    # our own packages: links as committed
        proj, config, state = work / "project", work / "config", work / "state"
        config.mkdir(mode=0o700)
        state.mkdir(mode=0o700)
        _commit(proj)
        for f in sorted((work / "overlay").rglob("*")):
            if f.is_file():
                (proj / f.relative_to(work / "overlay")).parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, proj / f.relative_to(work / "overlay"))
        penv = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORESEARCH_", "RAY_"))}
        penv.update(env)
        penv.update(PYTHONPATH=str(work / "harness"), XDG_CONFIG_HOME=str(config), PYTHONDONTWRITEBYTECODE="1",
                    AUTORESEARCH_STATE=str(state))          # stage scratch and logs: this task's, outside the project
        if (proj / "prepare.py").is_file():
            rc, out = _child([sys.executable, "prepare.py"], proj, penv, work / "prepare.log")
            if rc != 0:
                raise RuntimeError(f"prepare.py failed on this node ({rc}): {out[-800:]}")
        rc, log = _child([sys.executable, "-m", "autoresearch.run", "--execute", run_id, "--slot", "0", "--slots",
                          "1"], proj, penv, work / "runner.log")
        run_dir = proj / "runs" / run_id
        files, left = _results(run_dir, out_cap, state)
        keys = sorted((config / "autoresearch" / "keys").rglob("*.key"))   # keys/<project id>/<key id>.key
        return {"node": _node_id(), "job": _node_id("job"), "rc": rc, "runner_log": log[-2000:],
                "metrics": (run_dir / "metrics.json").read_bytes() if (run_dir / "metrics.json").is_file() else None,
                "key": keys[0].read_bytes() if len(keys) == 1 else None, "files": files, "out_left": left}
    finally:
        _remove(work)
        os.close(held)
