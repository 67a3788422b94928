"""The evaluator split (eval.model): the human's eval script and the agent's model, in two sandboxes.

    the script   eval.command, eval.files as committed at the base commit, in a sandbox WITHOUT the
                 project: only the frozen files at their paths, the autoresearch package (for
                 autoresearch.inside.evalclient), run.python, the mounts for stage eval (or final), and
                 the metric channel. No checkpoint, no agent code, no network.
    the model    one or two model servers (autoresearch.inside.array_server, two when eval.checks > 0),
                 each in its own sandbox: the project read-only with the run's snapshot, the
                 checkpoint read-only, the mounts TRAIN saw, no held-out data, no metric channel.
    the relay    here, in the runner (autoresearch.run.relay): the script's requests to the servers,
                 every answer checked, hidden re-asks. Its verdict outranks whatever the script did.

Agent code thus never holds the labels, the loss or the result channel.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

from ..inside.protocol import AGENT_STARTS
from ..record.flows import SERVER
from ..hostenv import stage_mounts
from ..program import Program
from ..sandbox import Backend, Mount, SandboxResult, SandboxSpec, Session
from .evalcmd import METRIC_FILE, ScriptRun, eval_argv, evalcmd_outcome, frozen_mounts, metric_channel, read_metric
from .interpreter import interpreter_mounts, resolve
from .logs import join_servers, servers_warmed
from ..record import inside
from .outcome import Wording, ladder
from .relay import Relay
from .specs import (EVAL_NAME, STARTUP, StageInputs, StageSpec, hidden_splits, hidden_under, home_cache,
                    package_mount, project_mounts, python_of, runtime_mounts, stage_spec)
from .workcopy import remove_work_copy, work_copy


def _interpreter(backend: Backend, program: Program, root: Path, project_shown: bool) -> list[Mount]:
    """run.python's prefixes; without the project mounted, a venv inside it too (read-only)."""
    interp = resolve(root, program)
    if interp is None:
        return []
    mounts = interpreter_mounts(interp, backend, root)
    if not project_shown:
        for d in dict.fromkeys((interp.prefix, str(Path(interp.path).parent))):
            if inside(Path(d), root) and not any(inside(Path(d), Path(m.target)) for m in mounts):
                mounts.append(Mount(Path(d).resolve(), d))
    return mounts


def script_spec(inp: StageInputs, run: ScriptRun, session: Session) -> SandboxSpec:
    """The trusted eval script's sandbox: no project, no checkpoint; the frozen files, the client
    package, the `stage` mounts, the metric channel (its only writable mount)."""
    backend, program, lay = inp.sandbox, inp.program, inp.lay
    pkg_mounts, pkg_path = package_mount()
    mounts = runtime_mounts(backend, lay.root) + _interpreter(backend, program, lay.root, False)
    mounts += [Mount(p.resolve(), str(p)) for p in stage_mounts(program.mounts, run.stage)]
    mounts += hidden_splits(program, lay, None, run.stage) + frozen_mounts(lay, run.frozen) + pkg_mounts
    mounts += [Mount(run.channel, str(run.channel), writable=True)]
    env = {k: v for k, v in inp.env.items() if k != "AUTORESEARCH_OUT"}
    env.update({"PYTHONPATH": f"{lay.root}:{pkg_path}", "AUTORESEARCH_METRIC_FILE": str(run.channel / METRIC_FILE),
                "AUTORESEARCH_STAGE": run.stage})
    return stage_spec(inp, StageSpec(argv=eval_argv(python_of(backend, program, lay.root), program), mounts=mounts,
                                     env=env, cwd=lay.root, log=run.log, timeout_s=program.budget.eval_seconds,
                                     session=session, disk_bytes=64 << 14))


def server_spec(inp: StageInputs, log: Path, session: Session, work: Path, wait_s: float = 0.0) -> SandboxSpec:
    """A model server's sandbox, run in `work` (its own writable copy of the run's snapshot): the
    project and the checkpoint read-only, the mounts TRAIN saw, nothing held out. It runs behind the
    trusted warm-up (startup.py module) and waits for the relay's GO before agent code: eval_seconds
    counts from then; until then it may take the grace plus `wait_s` (started with TRAIN: TRAIN's
    longest)."""
    backend, program, lay = inp.sandbox, inp.program, inp.lay
    assert program.eval is not None and program.eval.model is not None
    pkg_mounts, pkg_path = package_mount()
    home, home_env = home_cache(program, None, "eval")
    mounts = runtime_mounts(backend, lay.root) + _interpreter(backend, program, lay.root, True) + home
    mounts += [Mount(p.resolve(), str(p)) for p in stage_mounts(program.mounts, "train")]
    mounts += hidden_under(lay, stage_mounts(program.mounts, "train") + [Path(m.target) for m in home], None)
    mounts += project_mounts(lay, None, SERVER) + [Mount(lay.out, str(lay.out))]
    mounts += [m for m in pkg_mounts if not inside(m.source, lay.root)] + [Mount(work, str(work), writable=True)]
    env = {**inp.env, **home_env, "PYTHONPATH": f"{work}:{pkg_path}", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    argv = [python_of(backend, program, lay.root), "-I", str(STARTUP), "module", "autoresearch.inside.array_server",
            "--project", str(work), "--entry", program.eval.model, "--out", str(lay.out)]
    argv += [f"--source-root={r}" for r in program.run.source_roots]
    return stage_spec(inp, StageSpec(argv=argv, mounts=mounts, env=env, cwd=work, log=log,
                                     timeout_s=program.budget.eval_seconds, session=session,
                                     start_marker=AGENT_STARTS.encode(),
                                     startup_s=max(program.budget.grace_seconds, 1.0) + wait_s))


def _server_outcome(results: list[SandboxResult], program: Program) -> tuple[str, str] | None:
    """Why a model server vanished, from its sandbox result; None when none says."""
    for r in results:
        if (out := ladder(r, Wording(
                what="the model server", memory_gb=program.sandbox.memory_gb, ok_codes=(0, None),
                timeout=f"the model server ran past eval_seconds {program.budget.eval_seconds:g} s",
                crash=lambda code: f"the model server exited with code {code}; its output is in the eval log"))):
            return out
    return None


class SplitServers:
    """The evaluator split's model servers and their relay, started early: with TRAIN (`wait_s`:
    TRAIN's longest), they warm up while it trains and import agent code only after GO. The
    runner calls finish(go=False) when TRAIN did not end ok (they exit without running agent
    code); otherwise run_split tells them GO and runs the script against them."""

    def __init__(self, inp: StageInputs, log: Path, wait_s: float = 0.0) -> None:
        ev = inp.program.eval
        assert ev is not None
        self.inp, self.log = inp, log
        self.relay = Relay(checks=ev.checks, mix=ev.batch_independent, tolerance=ev.tolerance,
                           compare=dict(ev.compare), limit=int(ev.max_mb * 2**20),
                           servers=2 if ev.checks > 0 else 1, wait_s=inp.program.budget.eval_seconds)
        self.results: list[SandboxResult] = []
        self.errors: list[BaseException] = []
        self.specs: list[SandboxSpec] = []
        try:
            for k in range(self.relay.servers):
                work = work_copy(inp.lay, f"{EVAL_NAME}-srv-{k}")          # the same names in final
                self.specs.append(server_spec(inp, log, self.relay.server_session(k), work, wait_s))
        except BaseException:
            self._remove()
            raise
        self.threads = [threading.Thread(target=self._server, args=(k,), daemon=True)
                        for k in range(self.relay.servers)]
        for t in self.threads:
            t.start()

    def _server(self, k: int) -> None:
        try:
            self.results.append(self.inp.sandbox.run(self.specs[k]))
        except BaseException as e:                     # noqa: BLE001 -- re-raised in the caller's thread
            self.errors.append(e)
            self.relay.aborted = True
        finally:
            self.relay.srv[k].ready.set()               # a server that never started wakes the relay

    def _remove(self) -> None:
        for spec in self.specs:                        # no writable storage outlives a model server
            remove_work_copy(Path(spec.cwd))

    def warmed(self) -> bool:
        return servers_warmed(self.log, self.threads)

    def finish(self, go: bool) -> tuple[SandboxResult | None, dict]:
        """GO, or (go=False) hang up: the servers exit without running agent code. Waits for them
        when it hangs up (run_split waits after GO, once the script has ended)."""
        if go:
            self.relay.go.set()
            return None, {}
        for spec in self.specs:                        # stopped at once, not after their warm-up ends
            spec.session_grace_s = 0.0
        self.relay.aborted = True
        self.relay.done.set()
        self.join()
        return None, {}

    def join(self) -> None:
        def hang_up() -> None:
            self.relay.aborted = True
            self.relay.done.set()
        try:
            join_servers(self.threads, hang_up)
        finally:
            self._remove()
        if self.errors:
            raise self.errors[0]


def start_split(job, train_s: float) -> SplitServers:
    """The evaluator split's servers for a run's EVAL stage, started with TRAIN (registry: the
    "model" evaluator's `warm`); their log is the run's eval log, begun here."""
    from ..record import new_log
    lay = job.lay
    log = new_log(lay.eval_log, f"eval log of run {lay.run_dir.name}: {' '.join(job.program.eval.command)}\n")
    return SplitServers(job.inputs, log, wait_s=train_s)


def run_split(inp: StageInputs, frozen: dict[str, bytes], log: Path, stage: str = "eval",
              servers: SplitServers | None = None) -> tuple[SandboxResult, str, str | None, float | None, dict]:
    """The eval script once, its model() served by the agent's code in other sandboxes (`servers`,
    started with TRAIN, or now): (the script's sandbox result, status, reason, value, the relay's
    figures)."""
    sandbox, program, lay = inp.sandbox, inp.program, inp.lay
    servers = servers if servers is not None else SplitServers(inp, log)
    relay, results = servers.relay, servers.results
    servers.finish(go=True)
    channel = metric_channel(lay)
    try:
        res = sandbox.run(script_spec(inp, ScriptRun(frozen, channel, log, stage), relay.client_session()))
        value, problem = read_metric(channel)
    finally:
        relay.done.set()
        servers.join()
        shutil.rmtree(channel, ignore_errors=True)
    figures = {**relay.stats, "servers": relay.servers}
    if relay.verdict is not None:
        status, reason = relay.verdict.status, relay.verdict.reason
        if relay.hangup and (why := _server_outcome(results, program)) is not None:
            status, reason = why                        # why the server vanished: its sandbox says
        return res, status, reason, None, figures
    status, reason = evalcmd_outcome(res, value, problem, program, log)
    return res, status, reason, value if status == "ok" else None, figures
