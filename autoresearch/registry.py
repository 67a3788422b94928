"""The registries of what varies by name: sandbox backends, wave executors and evaluators.

A backend's, an executor's or an evaluation mode's name is written here and nowhere else (the
architecture test checks comparisons, Literal types and CLI choices): program.md's schema, the
CLI's --backend and --mode choices, `doctor`'s checks, the backend chooser, the runner's EVAL
stage and `autoresearch final` derive from these tables. A new backend is one module under
sandbox/ with a class that has `name`, `available()`, `runtime()`, `describe()`, `run(spec)`,
plus one line here; a new built-in metric is one module with its stage and measure functions,
plus one entry in EVALUATORS. Import-free: program.md's schema and the sandbox load it.
"""
from __future__ import annotations

from dataclasses import dataclass

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
#   module  a remote one's module, which the scheduler and doctor use through executor_module():
#           HINT, UNREACHABLE_FIX, unreachable(address), connect(program), cluster_slots(program),
#           Driver(program) (one per scheduler) with .execute(root, run_id, program, stop) (the local
#           one is the scheduler itself)
#   remote  runs leave this machine (with the committed project: it must be committed); takes
#           executor.address and executor.resources
#   needs   a Python module it needs on this machine (doctor checks it), or ""
EXECUTORS: dict[str, dict] = {
    "local": {"module": "autoresearch.run.scheduler", "remote": False, "needs": ""},
    "ray": {"module": "autoresearch.run.rayexec", "remote": True, "needs": "ray"},
}
DEFAULT_EXECUTOR = next(iter(EXECUTORS))
REMOTE_EXECUTORS: tuple[str, ...] = tuple(n for n, e in EXECUTORS.items() if e["remote"])




@dataclass(frozen=True)
class Evaluator:
    """Who measures a run: selected by program.md's run.mode (and, within eval_command, eval.model)."""
    mode: str                                    # the run.mode that selects it
    metric: tuple[str, str] | None = None        # (name, direction) it measures, built in; None: metric.*
    stage: str = ""        # "module:function" of a run's EVAL stage, (EvalJob, RunMetrics) -> (status,
    #                        reason, peak bytes); "": no EVAL stage, the metric is read from TRAIN's log
    measure: str = ""      # "module:function" scoring a checkpoint once, (EvalJob) -> (sandbox result,
    #                        status, reason, value, figures): `final` scores with it; "": nothing to score
    warm: str = ""         # "module:function" starting its model servers with TRAIN, (EvalJob, TRAIN's longest
    #                        seconds) -> servers with finish(go) (EvalJob.servers); "": none
    data: bool = False     # reads prepare.py's data folder (the splits) on this machine
    script: bool = False   # the human's frozen eval script (program.md's eval: section)
    split: bool = False    # the evaluator split: chosen by eval.model within its mode


# name -> Evaluator; the first one's mode is run.mode's default.
EVALUATORS: dict[str, Evaluator] = {
    "bpb": Evaluator("two_stage", ("val_bpb", "minimize"), "autoresearch.run.evaluate:eval_stage",
                     "autoresearch.run.evaluate:measure_bpb", "autoresearch.run.evaluate:start_servers", data=True),
    "command": Evaluator("eval_command", None, "autoresearch.run.evalstage:evalcmd_stage",
                         "autoresearch.run.evalstage:measure_command", script=True),
    "model": Evaluator("eval_command", None, "autoresearch.run.evalstage:evalcmd_stage",
                       "autoresearch.run.evalstage:measure_split", "autoresearch.run.evalsplit:start_split",
                       script=True, split=True),
    "log": Evaluator("inline"),                  # the last line of TRAIN's output matching run.metric_regex
}
MODES: tuple[str, ...] = tuple(dict.fromkeys(e.mode for e in EVALUATORS.values()))
DEFAULT_MODE = MODES[0]
BUILTIN: tuple[str, str] = next(e.metric for e in EVALUATORS.values() if e.metric)   # the built-in metric
LOG_MODE = next(e.mode for e in EVALUATORS.values() if not e.stage)     # init's default: works on any repo
SCRIPT_MODE = next(e.mode for e in EVALUATORS.values() if e.script)


def evaluator(mode: str, model: bool = False) -> Evaluator:
    """The one place the evaluation is chosen: run.mode, then eval.model (the split) within it."""
    mine = [e for e in EVALUATORS.values() if e.mode == mode]
    return next((e for e in mine if e.split == model), mine[0])


def from_log(mode: str) -> bool:
    """Is this mode's metric read from the training's own output (no trusted evaluator)?"""
    return not evaluator(mode).stage


def function(ref: str):
    """The function a "module:function" names, imported only now."""
    from importlib import import_module
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


def remote(executor: str) -> bool:
    """Do this executor's runs leave this machine (the committed project ships with them)?"""
    return bool(EXECUTORS.get(executor, {}).get("remote"))


def executor_module(executor: str):
    """A remote executor's module (see EXECUTORS), imported only now."""
    from importlib import import_module
    return import_module(EXECUTORS[executor]["module"])


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
