"""A package's front door that opens rooms only when asked (PEP 562).

`from autoresearch.record import RunMetrics` loads record/metrics.py then, not before: the guard's
hot path imports record.flows, and `./run.sh`'s start-up imports run/, and neither may pay for the
rest. Imports only sys (not even typing), so the guard's import stays os-only.
"""
from __future__ import annotations

import sys


def lazy(package: str, exports: dict[str, tuple[str, str]]) -> tuple[object, object]:
    """(__getattr__, __dir__) for `package`: name -> (module in the package, its name there)."""
    def __getattr__(name: str) -> object:
        try:
            module, attr = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        from importlib import import_module        # here: the guard's import stays os-only
        value = getattr(import_module(f"{package}.{module}"), attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))
    return __getattr__, __dir__
