"""Which backend runs: the one asked for by name, or for "auto" docker if an engine answers,
else bwrap; never silently `none`."""
from __future__ import annotations

from .bwrap import BwrapBackend
from .docker import DockerBackend
from .none import NoneBackend
from .spec import Backend, SandboxUnavailable


def choose_backend(requested: str = "auto", image: str | None = None) -> Backend:
    """docker if an engine answers, else bwrap; never silently `none`.
    An explicit request that cannot be met raises SandboxUnavailable with the fix."""
    if requested == "none":
        return NoneBackend()
    if requested == "docker":
        d = DockerBackend(image)
        ok, why = d.available()
        if not ok:
            raise SandboxUnavailable(f"sandbox.backend is docker but {why}")
        return d
    if requested == "bwrap":
        b = BwrapBackend()
        ok, why = b.available()
        if not ok:
            raise SandboxUnavailable(f"sandbox.backend is bwrap but {why}")
        return b
    if requested != "auto":
        raise SandboxUnavailable(f"unknown sandbox backend {requested!r}: use auto, docker, bwrap or none")
    d = DockerBackend(image)
    ok_d, why_d = d.available()
    if ok_d:
        return d
    b = BwrapBackend()
    ok_b, why_b = b.available()
    if ok_b:
        return b
    raise SandboxUnavailable(
        "no sandbox available: " + why_d + "; and " + why_b +
        ". (sandbox.backend: none runs without isolation, only if you accept that.)")
