"""Which backend runs: the one asked for by name, or for "auto" the first isolating one that is
available (registry.ISOLATING: docker if an engine answers, else bwrap); never silently `none`."""
from __future__ import annotations

import inspect

from ..registry import AUTO, BACKEND_CHOICES, BACKENDS, ISOLATING, backend_class, isolates, words
from .spec import Backend, SandboxUnavailable


def backend_named(name: str, image: str | None = None) -> Backend:
    """An instance of the registered backend `name` (the image for those that take one)."""
    cls = backend_class(name)
    return cls(image) if "image" in inspect.signature(cls).parameters else cls()


def choose_backend(requested: str = AUTO, image: str | None = None) -> Backend:
    """The first available isolating backend for "auto", else the one asked for; never silently
    an unisolated one. An explicit request that cannot be met raises SandboxUnavailable with the fix."""
    if requested != AUTO and requested not in BACKENDS:
        raise SandboxUnavailable(f"unknown sandbox backend {requested!r}: use {words(BACKEND_CHOICES)}")
    if requested != AUTO:
        b = backend_named(requested, image)
        ok, why = b.available()
        if not ok and isolates(requested):
            raise SandboxUnavailable(f"sandbox.backend is {requested} but {why}")
        return b
    whys = []
    for name in ISOLATING:
        b = backend_named(name, image)
        ok, why = b.available()
        if ok:
            return b
        whys.append(why)
    unisolated = words([n for n in BACKENDS if not isolates(n)])
    raise SandboxUnavailable(
        "no sandbox available: " + "; and ".join(whys) +
        f". (sandbox.backend: {unisolated} runs without isolation, only if you accept that.)")
