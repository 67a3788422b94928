"""A warm run's holder (run/warm.py): `python -m autoresearch.run.warmhold ROOT N [--budget S]
[--backend NAME]`, started detached by the run before N. It builds run N's TRAIN sandbox and, for
the built-in evaluator, its two model servers, exactly as the runner would (staged: warm.staged),
and runs them: TRAIN until GO and its end, the servers with their stdin/stdout relayed to the
runner's scorer over a Unix socket (in a fresh 0700 folder, behind a random token). It ends them
on SIGTERM, and all of them when nobody takes it within the idle limit. Each sandbox's result
goes to result.json / result-eval-K.json."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..atomic import write_atomic
from ..fsclean import remove_tree
from ..record import RUNS_DIR, Layout, new_log, private_dir
from ..sandbox import SandboxResult, SandboxSpec
from .evalstage import evaluator_of
from .runner import RunOptions, prepare
from .trainstage import train_sandbox
from .specs import ServerSlot, StageInputs, base_env, eval_spec, repo_env
from .warm import idle_s
from .warmspec import Staged, spec_key, staged, warm_root, warmed

TOKEN_BYTES = 16
STOPS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
ORPHAN_POLL_S = 2.0


def hold(root: Path, n: int, budget: float | None, backend: str | None) -> int:
    """The holder: run n's sandboxes, staged, until GO and their ends (or SIGTERM, or the idle
    limit with no GO); their results in result*.json. Nothing is left behind unless a run took it."""
    st = Staged(warm_root(root) / f"{n:04d}")

    def stop(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for s in STOPS:
        signal.signal(s, stop)
    leftovers: list[Path] = []                          # what goes if no run takes it (paths fixed now:
    servers: HeldServers | None = None                  # a deleted project has no state id to find them by)
    try:
        threading.Thread(target=_orphaned, args=(root, st), daemon=True).start()
        p = prepare(root, RunOptions(budget=budget, backend=backend))
        lay = Layout(root, root / RUNS_DIR / f"{n:04d}", p.script, p.files, outputs=tuple(p.program.run.outputs))
        leftovers.append(lay.scratch)
        lay.hold()                                      # the next run's sweep leaves this scratch alone
        work = private_dir(lay.scratch / "work") / "train"
        work.mkdir()
        st.out.mkdir()
        st.go.mkdir(mode=0o755)
        st.script.write_bytes(p.code)
        env = repo_env(base_env(p.sandbox, lay, "/tmp", p.budget_s, 0), p.program, root)
        inp = StageInputs(p.sandbox, p.program, lay, env, p.data)
        spec = train_sandbox(inp, p.budget_s, p.inline, work)[2]
        wait = idle_s()
        if not p.inline and p.data is not None and evaluator_of(p.program).warm:
            leftovers.append(lay.eval_log.parent)       # the servers' warm-up lines: no run's
            servers = HeldServers(inp, st, wait + spec.startup_s + spec.timeout_s)
        write_atomic(st.state, json.dumps({
            "pid": os.getpid(), "key": spec_key(warmed(spec, lay, st, 0)), "idle_until": time.time() + wait,
            "servers": servers.keys if servers else [], "relay": [servers.sockdir, servers.token] if servers else []}))
        _train(p.sandbox, warmed(spec, lay, st, wait), st)
        if servers is not None:
            if not st.claimed.exists():
                servers.hang_up()                       # nobody took it: the servers end without GO
            servers.join()
    except KeyboardInterrupt:
        if servers is not None:
            servers.hang_up()
            servers.join()
    finally:
        for s in STOPS:                                 # a second stop cannot cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        if servers is not None:                         # whatever ended it: no server outlives it
            servers.hang_up()
            servers.join()
            servers.close()
        if not st.claimed.exists():
            for path in [st.dir, *leftovers]:
                remove_tree(path)
    return 0


def _orphaned(root: Path, st: Staged) -> None:
    """A holder whose project or staged folder is gone (a deleted checkout, a discard that could
    not signal it) ends as if stopped."""
    while root.is_dir() and st.dir.is_dir():
        time.sleep(ORPHAN_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)


def _train(sandbox, spec: SandboxSpec, st: Staged) -> None:
    started, res = time.monotonic(), None
    try:
        res = sandbox.run(spec)
    finally:
        write_atomic(st.result, json.dumps({"started": started, "ended": time.monotonic(),
                                            "result": None if res is None else _jsonable(res)}))


def _jsonable(res: SandboxResult) -> dict:
    """A stage's result (its stdout went to the log or the session, never here) as JSON."""
    return {**dataclasses.asdict(res), "stdout": ""}


class HeldServers:
    """The model servers of a warm run, as evaluate.Servers would start them (their work copies
    empty until the run fills them in place), each session relayed to whoever connects to its
    socket with the token: the runner's scorer."""

    def __init__(self, inp: StageInputs, st: Staged, wait_s: float) -> None:
        from .scorer import SERVERS
        lay = inp.lay
        self.st, self.sandbox, self.closed = st, inp.sandbox, threading.Event()
        self.sockdir = tempfile.mkdtemp(prefix="ar-warm-")     # short: a Unix socket path has 108 bytes
        self.token = secrets.token_hex(TOKEN_BYTES)
        new_log(lay.eval_log, f"eval log of run {lay.run_dir.name}\n")
        self.listeners: list[socket.socket] = []
        self.conns: list[socket.socket] = []
        self.specs: list[SandboxSpec] = []
        for k in range(SERVERS):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(os.path.join(self.sockdir, f"s{k}"))
            listener.listen(1)
            listener.settimeout(0.2)
            self.listeners.append(listener)
            spec = eval_spec(inp, ServerSlot(self._relay(k), lay.eval_log, "eval", k, wait_s, "empty"))
            self.specs.append(staged(spec, lay, st))
        self.keys = [spec_key(s) for s in self.specs]
        self.threads = [threading.Thread(target=self._one, args=(k,), daemon=True) for k in range(SERVERS)]
        for t in self.threads:
            t.start()

    def _one(self, k: int) -> None:
        res = self.sandbox.run(self.specs[k])
        if self.st.dir.is_dir():                        # (never recreated once the holder removed it)
            write_atomic(self.st.dir / f"result-eval-{k}.json", json.dumps(_jsonable(res)))

    def _accept(self, k: int) -> socket.socket | None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listeners[k].accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return None
            conn.settimeout(5.0)
            try:
                got = b""
                while len(got) < TOKEN_BYTES and (b := conn.recv(TOKEN_BYTES - len(got))):
                    got += b
            except OSError:
                got = b""
            if secrets.compare_digest(got, bytes.fromhex(self.token)):
                conn.settimeout(None)
                return conn
            conn.close()
        return None

    def _relay(self, k: int):
        def session(stdin, stdout) -> None:
            conn = self._accept(k)
            if conn is None:
                return
            self.conns.append(conn)
            pump = threading.Thread(target=_to_server, args=(conn, stdin), daemon=True)
            pump.start()
            try:
                while not self.closed.is_set() and (b := stdout.read1(1 << 16)):
                    conn.sendall(b)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                pump.join(1.0)
        return session

    def hang_up(self) -> None:
        """The sessions end (a server waiting for GO then exits without running agent code)."""
        self.closed.set()
        for spec in self.specs:
            spec.session_grace_s = 0.0
        for conn in self.conns:                         # a relayed session: its stdin ends
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join(self) -> None:
        for t in self.threads:
            while t.is_alive():
                t.join(0.1)

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


def _to_server(conn: socket.socket, stdin) -> None:
    """The scorer's bytes to the server's stdin, until the scorer hangs up (then stdin's EOF)."""
    try:
        while b := conn.recv(1 << 16):
            stdin.write(b)
            stdin.flush()
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError, ValueError):
            stdin.close()


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m autoresearch.run.warmhold")
    ap.add_argument("root", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("--budget", type=float)
    ap.add_argument("--backend")
    a = ap.parse_args(argv)
    return hold(a.root.resolve(), a.n, a.budget, a.backend)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
