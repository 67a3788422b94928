"""The next run's sandboxes, warmed while the agent thinks (issue 27; opt in: AUTORESEARCH_WARM=1).

TRAIN's trusted start-up (the interpreter, torch: 2-5 s on a small machine, more on a busy one)
is outside the budget but inside the night. So a run that ends reserves the next run id and
starts that run's TRAIN sandbox at once, in a detached holder process (`python -m
autoresearch.run.warmhold`), exactly as the next run would build it (the same mounts, limits and
environment) but for three staged paths in the state folder: the train script's copy, out/ and
a read-only go/ folder. The work copy is the run's own (empty). The sandbox warms up and waits
(startup.py wait); no agent code runs before GO, and nothing of an earlier run is in it.

The next ./run.sh takes it only if it is for the id the run would be given and the sandbox spec
it would build now, staged the same way, is the holder's byte for byte (program.md, the backend,
the budget, run.python, the editable set's paths, the data, the GPUs); anything else and the
holder is stopped and the run starts cold. It then writes the run's snapshot into the code
copies and the work copy in place (the sandbox sees them through its mounts), the script into
the staged copy, and go.json (the run's seed); the holder reports the sandbox's result, and
the runner links out/ and the log into runs/NNNN/. It holds the run's two model servers the same
way (their stdin/stdout relayed to the runner's scorer, warmhold.HeldServers), and TRAIN's GO waits
for their warm-up, which would otherwise take the budget's CPU. A holder nobody takes ends
after IDLE_S; `autoresearch pause` and a run without the opt-in stop it.

    <state>/warm/NNNN/  pid, script, out/, go/go.json, train.log, state.json, result*.json, claimed,
                        holder.log -- host and TRAIN only (flows: warm TRAIN)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .. import ledger
from ..fsclean import remove_tree
from ..record import Layout, clean_out, private_dir, reserve_run_id, take_run_id
from ..sandbox import SandboxResult, SandboxSpec, give_writable, pid_alive
from .warmspec import Staged, await_warm_up, send_go, spec_key, staged, train_work, warm_root, warmed

WARM_ENV = "AUTORESEARCH_WARM"              # "1": warm the next run's TRAIN
IDLE_ENV = "AUTORESEARCH_WARM_IDLE_S"
IDLE_S = 900.0                              # a holder nobody takes ends after this
TAKE_MARGIN_S = 120.0                       # nor is one this close to its end taken (a quarter of a shorter idle)
POLL_S = 0.01
EXIT_WAIT_S = 15.0


def enabled() -> bool:
    return os.environ.get(WARM_ENV, "") == "1"


def idle_s() -> float:
    try:
        return max(5.0, float(os.environ.get(IDLE_ENV, IDLE_S)))
    except ValueError:
        return IDLE_S


class NotThisRun(Exception):
    """A holder's sandboxes are not the ones this run needs: it starts cold."""


# ---------------------------------------------------------------- the runner's side

def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:     # our own child (a test's in-process runs): reaped
            return False
    if not pid_alive(pid):
        return False
    try:
        return b"autoresearch.run.warmhold" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _state(st: Staged) -> dict:
    try:
        return json.loads(st.state.read_text())
    except (OSError, ValueError):
        return {}


def discard(st: Staged) -> None:
    """Stop a holder (its sandbox ends without running agent code) and remove its folder."""
    pid = _state(st).get("pid")
    if not isinstance(pid, int):                 # still setting up: the pid start_next wrote
        with contextlib.suppress(OSError, ValueError):
            pid = int((st.dir / "pid").read_text())
    if isinstance(pid, int) and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        _wait_gone(pid)
    remove_tree(st.dir)


def _wait_gone(pid: int) -> None:
    end = time.monotonic() + EXIT_WAIT_S
    while _alive(pid):
        if time.monotonic() > end:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + EXIT_WAIT_S
        time.sleep(POLL_S)


def discard_all(root: Path) -> None:
    for st in _holders(root):
        discard(st)


def _holders(root: Path) -> list[Staged]:
    try:
        return [Staged(d) for d in sorted(warm_root(root).iterdir()) if d.name.isdigit()]
    except OSError:
        return []


def take(root: Path) -> "Warm | None":
    """Under the run lock: the live holder for the id this run is given (runs/NNNN made), or None;
    every other holder is stopped. The caller has decided the run is warmable (wanted())."""
    found = None
    for st in _holders(root):
        s = _state(st)
        ready = (isinstance(s.get("pid"), int) and _alive(s["pid"]) and not st.result.exists()
                 and not st.claimed.exists() and time.time() < s.get("idle_until", 0) - min(TAKE_MARGIN_S, idle_s() / 4))
        if found is None and ready and (run_dir := take_run_id(root, st.run_id)) is not None:
            st.claimed.touch()
            found = Warm(st, s["pid"], s["key"], run_dir, s.get("servers", []), tuple(s.get("relay", ("", ""))))
        else:
            discard(st)
    return found


@dataclasses.dataclass
class Warm:
    """A taken holder: its staged folder, pid, spec keys (TRAIN's; each model server's, when it
    holds them too), the relays' socket folder and token, and the run folder made for it."""
    st: Staged
    pid: int
    key: str
    run_dir: Path
    servers: list[str] = dataclasses.field(default_factory=list)
    relay: tuple[str, str] = ("", "")

    @property
    def serves(self) -> bool:
        return bool(self.servers)

    def check_servers(self, specs: list[SandboxSpec], lay: Layout) -> None:
        """Are the holder's model servers the ones this run would start? Else NotThisRun."""
        if [spec_key(staged(s, lay, self.st)) for s in specs] != self.servers:
            raise NotThisRun("the warm model servers are not this run's")

    def finished(self) -> bool:
        return self.st.result.exists() and all((self.st.dir / f"result-eval-{k}.json").exists()
                                               for k in range(len(self.servers)))

    def backend(self) -> "Relayed":
        return Relayed(self)

    def refresh(self, lay: Layout) -> None:
        """The run's snapshot into the code copies the holder made (in place: the sandboxes mount
        those files), before any stage can read them."""
        for rel, data in lay.snapshot.items():
            copy = lay.scratch / "code" / rel
            if data is not None and rel != lay.script and copy.is_file() and not copy.is_symlink():
                copy.write_bytes(data)

    def fits(self, spec: SandboxSpec, lay: Layout, work: Path) -> bool:
        """Is the holder's sandbox the one this run would start (and its work copy untouched)?"""
        try:
            empty = work.is_dir() and not work.is_symlink() and not any(work.iterdir())
        except OSError:
            return False
        return empty and spec_key(warmed(spec, lay, self.st, 0)) == self.key and _alive(self.pid)

    def run(self, lay: Layout, spec: SandboxSpec, code: bytes, servers=None) -> tuple[SandboxResult, dict]:
        """GO and the sandbox's result, its times from GO (the wait is not this run's); `extra`
        says how long the holder had been warm. GO waits (at most the grace) for the model servers'
        warm-up (`servers`: evalstage.WarmServers), which would otherwise take the budget's CPU. The
        log is runs/NNNN/train.log (linked when the state folder shares its disk, else copied at
        the end); out/'s files are linked (else copied) into runs/NNNN/out: the model servers read
        the staged ones."""
        self.st.script.write_bytes(code)
        give_writable(spec)                          # the work copy just filled: the sandbox user's, as cold
        linked = _link(self.st.log, lay.log)
        t_ask = time.monotonic()
        await_warm_up(servers, spec.startup_s)
        t_go = time.monotonic()
        send_go(self.st.go, spec)
        try:
            r = self._result()
        except BaseException:
            self.stop()
            raise
        if not self.serves:
            _wait_gone(self.pid)
        if not linked:
            shutil.copyfile(self.st.log, lay.log)
        clean_out(self.st.out)                       # what the model servers read, and the record keeps
        shutil.copytree(self.st.out, lay.out, copy_function=_link_or_copy, dirs_exist_ok=True)
        res = SandboxResult(**{**r["result"], "stdout": b""})
        marker = None if res.startup_seconds is None else r["started"] + res.startup_seconds
        res = dataclasses.replace(res, wall_seconds=max(0.0, r["ended"] - t_go),
                                  startup_seconds=None if marker is None else max(0.0, marker - t_go))
        return res, {"warm_waited_seconds": round(t_ask - r["started"], 3),
                     "servers_warm_seconds": round(t_go - t_ask, 3)}

    def _result(self) -> dict:
        while True:
            with contextlib.suppress(OSError, ValueError):
                r = json.loads(self.st.result.read_text())
                if r.get("result") is None:
                    raise RuntimeError("the warm TRAIN's holder was stopped before it ran this run")
                return r
            if not _alive(self.pid) and not self.st.result.exists():
                raise RuntimeError(f"the warm TRAIN's holder (pid {self.pid}) died; see {self.st.holder_log}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """End the sandbox if it still runs (the holder turns SIGTERM into its cleanup); a holder
        whose every result is written gets a moment to end by itself first."""
        end = time.monotonic() + (EXIT_WAIT_S if self.finished() else 0)
        while _alive(self.pid) and time.monotonic() < end:
            time.sleep(POLL_S)
        if _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            _wait_gone(self.pid)

    def done(self) -> None:
        remove_tree(self.st.dir)


def hold_or_refresh(held: Warm | None, lay: Layout) -> None:
    """A cold run holds its scratch; a warm one's holder holds it, and gets the run's snapshot."""
    if held is None:
        lay.hold()
    else:
        held.refresh(lay)


def end(held: Warm | None) -> None:
    """The run is over (or failed): its holder is stopped and its staged folder gone."""
    if held is not None:
        held.stop()
        held.done()


def start_stages(held: Warm | None, lay: Layout, train_spec: Callable[[Path], SandboxSpec],
                 start_servers: Callable[..., object] | None, note: dict) -> tuple[Callable[[], object] | None, Warm | None]:
    """What gives the run's model servers (None: it has none), and the holder still in use. The
    holder is given up (the run starts cold) unless its TRAIN sandbox is the one `train_spec(work)`
    builds and the model servers it holds, if any, are the run's: those are taken now
    (`start_servers(held)`). A holder of TRAIN alone (the evaluator split's servers are never
    held) is kept, its servers started now. A cold run's start beside its TRAIN (trainstage.py)."""
    work = train_work(lay)
    if held is not None and (not held.fits(train_spec(work), lay, work) or held.serves and start_servers is None):
        give_up(held, lay, note)
        held = None
    if start_servers is None or held is None:
        return start_servers, held
    try:
        servers = start_servers(held) if held.serves else start_servers()
    except NotThisRun:
        give_up(held, lay, note)
        return start_servers, None
    return (lambda: servers), held


def give_up(held: Warm, lay: Layout, note: dict) -> None:
    """The holder's sandbox is not this run's: stop it; the run goes on cold in the same folder."""
    note["warm"] = ("not used: its sandbox is not the one this run needs (program.md, the files or the machine "
                    "changed); started cold")
    end(held)
    lay.hold()


def wanted(backend: str, plain: bool) -> bool:
    """Warm the next TRAIN after this run? Opted in, an isolating backend (none runs on the host: no
    mounts to stage), and a plain experiment (no per-run program, grace or purpose of its own)."""
    from .. import registry
    return enabled() and plain and registry.isolates(backend)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link(src: Path, dst: Path) -> bool:
    try:
        dst.unlink(missing_ok=True)
        os.link(src, dst)
        return True
    except OSError:
        return False


def start_next(root: Path, budget: float | None, backend: str | None, metric_name: str) -> None:
    """After a run, under the run lock: reserve the next id and start its holder (detached). The
    ledger is begun first: the model servers hide it only if it exists, and the Stop hook is
    about to make it (the first run's holder would otherwise never be taken)."""
    discard_all(root)
    ledger.begin(root, metric_name)
    n = reserve_run_id(root, 0)
    st = Staged(private_dir(warm_root(root)) / f"{n:04d}")
    st.dir.mkdir(mode=0o700)
    argv = [sys.executable, "-m", "autoresearch.run.warmhold", str(root), str(n)]
    argv += ["--budget", repr(budget)] if budget is not None else []
    argv += ["--backend", backend] if backend else []
    with open(st.holder_log, "ab") as log:
        p = subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True)
    (st.dir / "pid").write_text(str(p.pid))        # discard() can stop it before it says so itself


class Relayed:
    """The backend a warm holder's model servers run under, as the runner sees them: run(spec)
    talks spec.session with server k (spec.cwd: its work copy, eval-k) through the holder's relay,
    then reads the sandbox's result the holder wrote."""
    name = "relayed"

    def __init__(self, held: Warm) -> None:
        self.held = held

    def run(self, spec: SandboxSpec) -> SandboxResult:
        k = int(Path(spec.cwd).name.rsplit("-", 1)[1])
        sockdir, token = self.held.relay
        give_writable(spec)                          # its work copy, filled in place
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(os.path.join(sockdir, f"s{k}"))
            conn.sendall(bytes.fromhex(token))
            w, r = conn.makefile("wb"), conn.makefile("rb")
            assert spec.session is not None
            try:
                spec.session(w, r)
            finally:
                with contextlib.suppress(OSError):
                    w.close()
                    r.close()
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        path = self.held.st.dir / f"result-eval-{k}.json"
        while not path.exists():
            if not _alive(self.held.pid) and not path.exists():
                raise RuntimeError(f"the warm model server {k}'s holder died; see {self.held.st.holder_log}")
            time.sleep(POLL_S)
        return SandboxResult(**{**json.loads(path.read_text()), "stdout": b""})
