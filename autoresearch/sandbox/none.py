"""The `none` backend: no isolation, asked for by name only; the caller records NONE_WARNING."""
from __future__ import annotations

from dataclasses import replace

from .gpus import gpu_env, selected_gpus
from .host import host_runtime
from .process import _run_process
from .spec import NONE_WARNING, Runtime, SandboxResult, SandboxSpec, _check_spec


class NoneBackend:
    """No isolation at all: a child process with the given env and cwd; mounts are ignored.
    Timeout, memory limit (cgroup when possible) and cleanup are still enforced."""
    name = "none"

    def available(self) -> tuple[bool, str]:
        return True, NONE_WARNING

    def runtime(self) -> Runtime:
        return host_runtime()

    def describe(self) -> str:
        return "none: " + NONE_WARNING

    def run(self, spec: SandboxSpec) -> SandboxResult:
        _check_spec(spec)
        spec = replace(spec, env={**spec.env, **gpu_env(selected_gpus(spec.gpus, spec.env))})
        return _run_process(self.name, list(spec.argv), spec)
