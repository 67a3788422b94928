"""The registries of what varies by name: sandbox backends and wave executors.

A backend's or an executor's name is written here and nowhere else (the architecture test checks
comparisons, Literal types and CLI choices): program.md's schema, the CLI's --backend choices,
`doctor`'s checks and the backend chooser derive from these tables. A new backend is one module
under sandbox/ with a class that has `name`, `available()`, `runtime()`, `describe()`, `run(spec)`,
plus one line here. Import-free: program.md's schema and the sandbox load it.
"""
from __future__ import annotations

AUTO = "auto"                  # not a backend: docker if an engine answers, else bwrap (ISOLATING, in order)

# name -> (module:class, isolates): "auto" tries the isolating ones in this order; the others run
# only when asked for by name, and their runs are recorded with a warning.
BACKENDS: dict[str, tuple[str, bool]] = {
    "docker": ("autoresearch.sandbox.docker:DockerBackend", True),
    "bwrap": ("autoresearch.sandbox.bwrap:BwrapBackend", True),
    "none": ("autoresearch.sandbox.none:NoneBackend", False),
}
ISOLATING: tuple[str, ...] = tuple(n for n, (_, iso) in BACKENDS.items() if iso)
BACKEND_CHOICES: tuple[str, ...] = (AUTO, *BACKENDS)
ISOLATING_CHOICES: tuple[str, ...] = (AUTO, *ISOLATING)     # `init` and `doctor` offer only these

# name -> what runs a wave's queued runs (executor.kind in program.md); the first is the default.
#   remote  runs leave this machine (with the committed project: it must be committed); takes
#           executor.address and executor.resources
#   needs   a Python module it needs on this machine (doctor checks it), or ""
EXECUTORS: dict[str, dict] = {
    "local": {"module": "autoresearch.run.scheduler", "remote": False, "needs": ""},
    "ray": {"module": "autoresearch.run.rayexec", "remote": True, "needs": "ray"},
}
DEFAULT_EXECUTOR = next(iter(EXECUTORS))
REMOTE_EXECUTORS: tuple[str, ...] = tuple(n for n, e in EXECUTORS.items() if e["remote"])


def remote(executor: str) -> bool:
    """Do this executor's runs leave this machine (the committed project ships with them)?"""
    return bool(EXECUTORS.get(executor, {}).get("remote"))


def isolates(backend: str) -> bool:
    """Does this backend isolate (False: `none`, runs as a plain process)? Unknown names do not."""
    return BACKENDS.get(backend, ("", False))[1]


def backend_class(name: str) -> type:
    """The class registered for `name` (KeyError for an unknown one), imported only now."""
    from importlib import import_module
    module, _, cls = BACKENDS[name][0].partition(":")
    return getattr(import_module(module), cls)


def words(names: tuple[str, ...] | list[str], last: str = "or") -> str:
    """'a, b or c', for messages that list the choices."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {last} {names[-1]}"
