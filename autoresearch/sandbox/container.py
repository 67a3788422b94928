"""One docker run: create the container, attach to its streams, start it, wait with a hard
timeout, and on every exit path kill and remove it, its cgroup parent and its watchdog."""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .bounds import _Capture, _DiskWatch, _LogSink, _StartClock
from .cgroups import _read_int, _remove_docker_parent
from .gpus import GpuHost, cvd_of, docker_device_request, select
from .fifos import SESSION_DIR, Fifos, command
from .host import HOSTS, sandbox_ids, user_dir
from .process import _talk
from .spec import _KILL_WAIT_S, LABEL, SandboxResult, SandboxSpec, SandboxUnavailable
from .watchdog import _WATCHDOG_MARGIN_S, _start_watchdog


class _ContainerRun:
    """One DockerBackend.run: its state, and its steps (start, wait, stop on every exit path, result)."""

    def __init__(self, api, image_id: str, spec: SandboxSpec, cg_parent: str | None, cg_dir: Path | None):
        self.api, self.image_id, self.spec = api, image_id, spec
        self.cg_parent, self.cg_dir = cg_parent, cg_dir
        self.log = _LogSink(spec.log_path, spec.log_limit) if spec.log_path else None
        self.clock = _StartClock(spec.start_marker if self.log is not None else None)
        if self.log is not None:
            self.log.clock = self.clock
        self.ended: float | None = None
        self.cap = _Capture(spec.stdout_limit)
        self.cid: str | None = None
        self.watchdog = None
        self.watch = _DiskWatch(spec, kill=lambda: api.kill(self.cid) if self.cid else None, clock=self.clock)
        self.threads: list[threading.Thread] = []
        self.stdin_sock = None
        self.fifos: Fifos | None = None             # a session's pipes (fifos.py)
        self.stop_wait = threading.Event()          # set at stop: the session's grace wait ends
        self.sampler: _StatsSampler | None = None
        self.start_time = time.monotonic()
        self.timed_out = False
        self.code: int | None = None
        self.oom = False
        self.peak: int | None = None
        self.wall, self.cut = 0.0, 0
        self.name = f"autoresearch-{os.getpid()}-{uuid.uuid4().hex[:12]}"   # removable even if create is interrupted
        self.gpu_host: GpuHost | None = None        # the host's GPUs; discovered when None (tests set one)

    def start(self) -> None:
        api, spec = self.api, self.spec
        if spec.session is not None:
            self.fifos = Fifos()
        self.cid = self._create()
        limit = spec.timeout_s + (spec.startup_s if self.clock.marker is not None else 0.0)
        self.watchdog = _start_watchdog(self.name, limit + _WATCHDOG_MARGIN_S, self.cg_parent)
        if spec.stdin_data is not None:
            self.stdin_sock = api.attach_socket(self.cid, params={"stdin": 1, "stream": 1})
        out = api.attach(self.cid, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        api.start(self.cid)
        self.start_time = time.monotonic()
        self.threads = self._pumps(out)
        for t in self.threads:
            t.start()
        self.watch.__enter__()

    def _create(self) -> str:
        import docker.errors
        try:
            return self._create_container()
        except docker.errors.APIError as e:
            if "capabilities: [[gpu]]" in str(e):
                raise SandboxUnavailable(
                    "docker cannot pass GPUs through: install the NVIDIA Container Toolkit "
                    "(nvidia-container-toolkit) and restart dockerd, or use sandbox.backend: bwrap") from None
            raise

    def _create_container(self) -> str:
        """Create (not start) the container; return its id."""
        import docker.types
        api, spec, cgroup_parent = self.api, self.spec, self.cg_parent
        uid, gid = sandbox_ids()
        env = dict(spec.env)
        extra: dict = {}
        host, cvd = self.gpu_host or GpuHost.discover(), cvd_of(spec.env)
        selected = select(spec.gpus, host, cvd)
        env.pop("CUDA_VISIBLE_DEVICES", None)       # the selected devices are renumbered from 0 inside
        if (req := docker_device_request(spec.gpus, selected, host, cvd)) is not None:
            extra["device_requests"] = [docker.types.DeviceRequest(**req)]
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if cgroup_parent:
            extra["cgroup_parent"] = cgroup_parent
        host_config = api.create_host_config(
            network_mode="none", read_only=True, tmpfs={"/tmp": "rw,exec,nosuid,nodev,mode=1777"},
            mounts=[docker.types.Mount(m.target, str(m.source), type="bind", read_only=not m.writable)
                    for m in sorted(spec.mounts, key=lambda m: len(Path(m.target).parts))]
            + [docker.types.Mount("/etc/hosts", _hosts_file(), type="bind", read_only=True)]
            + ([docker.types.Mount(SESSION_DIR, str(self.fifos.dir), type="bind", read_only=True)]
               if self.fifos is not None else []),
            cap_drop=["ALL"], security_opt=["no-new-privileges"], init=True,   # and docker's default seccomp
            log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            ulimits=[docker.types.Ulimit(name="fsize", soft=spec.disk_bytes, hard=spec.disk_bytes)]
            if spec.disk_bytes is not None else None,
            mem_limit=spec.memory_bytes, memswap_limit=spec.memory_bytes, pids_limit=spec.pids, shm_size=spec.shm_bytes,
            group_add=[str(g) for g in sorted(set(os.getgroups()) - {gid})] if os.getuid() != 0 else None,
            **extra)
        stdin = spec.stdin_data is not None
        c = api.create_container(
            name=self.name, image=self.image_id, command=_one_stream(spec), environment=env, working_dir=spec.cwd,
            user=f"{uid}:{gid}", hostname="sandbox", network_disabled=True, host_config=host_config,
            stdin_open=stdin, tty=False,   # detach=False: StdinOnce, so closing our stdin is EOF
            labels={LABEL: "1", LABEL + ".pid": str(os.getpid()), LABEL + ".host": socket.gethostname(),
                    LABEL + ".project": spec.owner or "-", LABEL + ".cgroup": cgroup_parent or ""})
        return c["Id"]

    def _pumps(self, out) -> list[threading.Thread]:
        """Threads that talk the session (or feed stdin), demultiplex the output, sample memory."""
        spec = self.spec
        threads = []
        if spec.session is not None:
            threads.append(threading.Thread(target=self._talk, daemon=True))
        threads.append(threading.Thread(target=_pump, args=(out, spec, self.cap, self.log), daemon=True))
        if self.stdin_sock is not None and spec.session is None:
            threads.append(threading.Thread(target=_feed_socket, args=(self.stdin_sock, spec.stdin_data), daemon=True))
        if self.cg_dir is None:
            self.sampler = _StatsSampler(self.api, self.cid)
            self.sampler.thread = threading.Thread(target=self.sampler.run, daemon=True)
            self.sampler.thread.start()
        return threads

    def _talk(self) -> None:
        spec = self.spec
        assert self.fifos is not None and spec.session is not None
        stdin, stdout = self.fifos.connect(lambda: self.ended is not None or self.stop_wait.is_set())
        _talk(spec.session, stdin, stdout, [])
        if not self.stop_wait.wait(spec.session_grace_s):
            with contextlib.suppress(Exception):
                self.api.kill(self.cid)                # lingering after the session: stopped, not a timeout

    def wait(self) -> None:
        """Until the container exits or its deadline (the start clock's: it moves when the start-up
        marker arrives) passes; the engine is asked in slices so a moved deadline is seen."""
        import requests
        spec = self.spec
        try:
            while True:
                deadline = self.clock.deadline(self.start_time, spec.timeout_s, spec.startup_s)
                left = deadline - time.monotonic()
                if left <= 0:
                    if not self._exited_by(deadline):
                        self.timed_out = True
                    return
                step, t0 = max(0.01, min(left, 1.0)), time.monotonic()
                try:
                    r = self.api.wait(self.cid, timeout=step)
                    self.code = int(r.get("StatusCode", -1))
                    return
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    if time.monotonic() - t0 < step - 0.05:
                        raise                       # the engine went away, not our slice's timeout
        finally:
            self.ended = time.monotonic()

    def _exited_by(self, deadline: float) -> bool:
        """Did the container exit before `deadline` (monotonic), though the engine said so late (a
        busy host starves dockerd)? Then its exit code stands; a timeout is only ours to call."""
        from datetime import datetime, timezone
        with contextlib.suppress(Exception):
            st = self.api.inspect_container(self.cid)["State"]
            if st.get("Running") or not st.get("FinishedAt"):
                return False
            stamp = st["FinishedAt"].rstrip("Z")
            end = datetime.fromisoformat(stamp[:26] if "." in stamp else stamp).replace(tzinfo=timezone.utc)
            if end.timestamp() <= time.time() - (time.monotonic() - deadline) + 0.25:
                self.code = int(st.get("ExitCode", -1))
                return True
        return False

    def stop(self) -> None:
        """Kill and remove the container, join the threads, read and remove the cgroup parent,
        stop the watchdog, close the log."""
        api, cid = self.api, self.cid
        self.watch.__exit__()
        self.stop_wait.set()
        self.wall = time.monotonic() - self.start_time
        if cid is not None:
            if self.code is None:
                with contextlib.suppress(Exception):
                    api.kill(cid)
            else:
                with contextlib.suppress(Exception):
                    self.oom = bool(api.inspect_container(cid)["State"].get("OOMKilled"))
            for t in self.threads:
                t.join(timeout=_KILL_WAIT_S)
        with contextlib.suppress(Exception):
            api.remove_container(cid or self.name, force=True, v=True)
        if self.sampler is not None and self.sampler.thread is not None:
            # the engine's stats stream outlives an exited container (dockerd 20.10): it ends at removal
            self.sampler.thread.join(timeout=_KILL_WAIT_S)
        if self.stdin_sock is not None:
            with contextlib.suppress(Exception):
                self.stdin_sock.close()
        if self.fifos is not None:
            self.fifos.remove()
        if self.cg_dir is not None:
            self.peak = _read_int(self.cg_dir / "memory.max_usage_in_bytes")
            _remove_docker_parent(self.cg_parent)
        if self.watchdog is not None:
            with contextlib.suppress(OSError):
                self.watchdog.kill()
                self.watchdog.wait()
        self.cut = self.log.close() if self.log is not None else 0

    def result(self) -> SandboxResult:
        spec, watch, timed_out, cap = self.spec, self.watch, self.timed_out, self.cap
        peak = self.sampler.peak if self.sampler is not None else self.peak
        code = None if self.code is not None and self.code < 0 else self.code
        disk = watch.exceeded or (spec.disk_bytes is not None and not timed_out and watch.over())
        agent, startup = self.clock.seconds(self.start_time, self.ended or self.start_time + self.wall)
        return SandboxResult(backend="docker", exit_code=None if timed_out else code, timed_out=timed_out,
                             oom=self.oom, wall_seconds=self.wall, peak_memory_bytes=peak, stdout=bytes(cap.buf),
                             stdout_truncated=cap.truncated, limits="docker", disk_exceeded=disk,
                             log_cut_bytes=self.cut, agent_seconds=agent, startup_seconds=startup,
                             startup_timed_out=timed_out and self.clock.marker is not None and self.clock.at is None)


def _hosts_file() -> str:
    """/etc/hosts for containers (network "none" leaves the engine's empty; torchrun's rendezvous
    needs localhost): one file per host user, in a folder only that user may write, never removed,
    so a killed runner leaves nothing behind."""
    d = user_dir()
    f = d / "hosts"
    if not f.is_file() or f.read_bytes() != HOSTS:
        tmp = d / f"hosts.{os.getpid()}"
        tmp.write_bytes(HOSTS)
        tmp.chmod(0o644)
        os.replace(tmp, f)
    return str(f)


def _pump(stream, spec: SandboxSpec, cap: _Capture, log: "_LogSink | None") -> None:
    """The attach stream: stderr (and stdout, unless a session has it) to the log or the capture."""
    with contextlib.suppress(Exception):
        for out, err in stream:
            if out and spec.capture_stdout:
                cap.add(out)
            elif out and log is not None:
                log.write(out)
            if err and log is not None:
                log.write(err)


def _one_stream(spec: SandboxSpec) -> list[str]:
    """The container's command. When both streams go to the log, stderr is pointed at stdout
    inside the container: the engine reads two pipes separately, which reorders lines and can
    even splice a stdout line into a traceback ("ValueErrorseed is 11")."""
    if spec.session is not None:
        return command(spec.argv)
    if spec.capture_stdout:
        return list(spec.argv)
    return ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh", *spec.argv]


def _feed_socket(sock, data: bytes) -> None:
    raw = getattr(sock, "_sock", sock)
    try:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class _StatsSampler:
    """Peak memory from the engine's stats stream, for engines whose cgroups we cannot read."""

    def __init__(self, api, cid: str):
        self.api, self.cid, self.peak = api, cid, None
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        with contextlib.suppress(Exception):
            for s in self.api.stats(self.cid, stream=True, decode=True):
                m = s.get("memory_stats") or {}
                v = max(m.get("max_usage") or 0, m.get("usage") or 0)
                if v:
                    self.peak = max(self.peak or 0, v)
