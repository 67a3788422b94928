"""The docker backend: the engine through the Python SDK, network "none", read-only root fs, tmpfs
/tmp, non-root user, all capabilities dropped, no-new-privileges (default seccomp), memory (swap
included), pids and fsize limits, engine log capped, project labels, a watchdog that outlives a
killed runner. This module: the engine, the image, orphan reaping; container.py runs one."""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from pathlib import Path

from .cgroups import _cgroup_mounts, _remove_docker_parent
from .container import _ContainerRun
from .host import pid_alive, _prepare_mounts
from .image import resolve_image
from .process import _signals_deferred
from .spec import LABEL, LOCAL_IMAGE_REPO, Runtime, SandboxResult, SandboxSpec, SandboxUnavailable, _check_spec

_DOCKER_FIX = ("no Docker engine answers: start it (sudo systemctl start docker, or "
               "dockerd &), make sure you may use it (the docker group or DOCKER_HOST), "
               "or install bubblewrap and use sandbox.backend: bwrap")


class DockerBackend:
    """Docker through its Python SDK. With an image built from container/Dockerfile the
    image's own Python runs; otherwise a local image built without any pull (FROM scratch:
    /etc/passwd, the /lib links) runs the host's interpreter and venv, bind-mounted read-only."""
    name = "docker"

    def __init__(self, image: str | None = None):
        self.image = image
        self._client = None
        self._image_id: str | None = None
        self._runtime: Runtime | None = None
        self._probe: tuple[bool, str] | None = None
        self._cg_base: Path | bool | None = None
        self._cg_lock = threading.Lock()
        self._tag = ""

    # -- engine and image
    def client(self):
        if self._client is None:
            import docker
            self._client = docker.from_env(timeout=120)
        return self._client

    def available(self) -> tuple[bool, str]:
        if self._probe is not None:
            return self._probe
        try:
            import docker  # noqa: F401
        except ImportError:
            self._probe = (False, "the docker Python package is missing: .venv/bin/pip install docker")
            return self._probe
        try:
            self.client().ping()
            self._probe = (True, "docker engine answers")
        except Exception as e:  # the SDK raises DockerException, requests errors, OSError...
            self._client = None
            self._probe = (False, f"{_DOCKER_FIX} ({type(e).__name__}: {str(e)[:200]})")
        return self._probe

    def _resolve_image(self) -> None:
        """Pick the configured image when it exists locally, else ensure the local one (cheap when built)."""
        if self._image_id is None:
            self._image_id, self._runtime, self._tag = resolve_image(self.client(), self.image)

    def runtime(self) -> Runtime:
        ok, why = self.available()
        if not ok:
            raise SandboxUnavailable(why)
        self._resolve_image()
        assert self._runtime is not None
        return self._runtime

    def describe(self) -> str:
        self.runtime()
        how = ("host Python bind-mounted read-only" if self._tag.startswith(LOCAL_IMAGE_REPO)
               else "the image's own Python")
        return f"docker: image {self._tag} ({how}), no network, read-only root, non-root, no capabilities"

    def cleanup_orphans(self, owner: str = "") -> int:
        """Remove this project's containers (label .project == owner) whose runner on this host
        is gone, and their cgroup folders. Never another project's: its runner may be alive
        somewhere this process cannot see."""
        n = 0
        host = socket.gethostname()
        for c in self.client().containers.list(all=True, filters={"label": f"{LABEL}.project={owner or '-'}"},
                                               ignore_removed=True):   # one removed meanwhile: another run's
            labels = c.labels or {}
            if labels.get(LABEL + ".host") != host:
                continue
            pid = int(labels.get(LABEL + ".pid", "0") or 0)
            if pid and not pid_alive(pid):
                with contextlib.suppress(Exception):
                    c.remove(force=True)
                    n += 1
                _remove_docker_parent(labels.get(LABEL + ".cgroup") or None)
        return n

    # -- one run
    def _cgroup_parent(self) -> tuple[str | None, Path | None]:
        """A per-run parent cgroup we can read after the container is gone (its max usage is
        the container's peak). Only for a local engine on cgroup v1 with the cgroupfs driver."""
        with self._cg_lock:          # the two model servers start at once: both must see the answer
            if self._cg_base is None:
                base: Path | bool = False
                with contextlib.suppress(Exception):
                    info = self.client().info()
                    mounts_v1, _ = _cgroup_mounts()
                    if (info.get("CgroupDriver") == "cgroupfs" and str(info.get("CgroupVersion")) == "1"
                            and "memory" in mounts_v1 and mounts_v1["memory"][1] == "/"
                            and os.access(mounts_v1["memory"][0], os.W_OK)):
                        base = Path(mounts_v1["memory"][0])
                self._cg_base = base
        if not self._cg_base:
            return None, None
        name = f"autoresearch/run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return "/" + name, self._cg_base / name

    def run(self, spec: SandboxSpec) -> SandboxResult:
        _check_spec(spec)
        self.runtime()
        self.cleanup_orphans(spec.owner)
        _prepare_mounts(spec, self.name)
        cg_parent, cg_dir = self._cgroup_parent()
        assert self._image_id is not None
        run = _ContainerRun(self.client().api, self._image_id, spec, cg_parent, cg_dir)
        try:
            run.start()
            run.wait()
        finally:
            with _signals_deferred():
                run.stop()
        return run.result()
