"""run: one experiment, `./run.sh -m "why"` (`python -m autoresearch.run`).

TRAIN in a fresh sandbox (no network, train split only, killed at budget + a save margin of agent
compute), then EVAL: two model servers (agent code, no data) scored by the trusted scorer here;
the result is signed into runs/NNNN/metrics.json and summarised for the agent.

    runner        run_experiment (the two stages, in order, under the run lock)
    main          ./run.sh's command line: one run, --queue, --wait
    scheduler     the local executor: up to executor.slots runs at once, one per GPU or CPU share
    inputs        budget, seed, prepare.py and the data, the evaluator's version, diff.patch
    trainstage    the TRAIN stage: a cold one starts first, its work copy filled as it warms up
    specs         each stage's sandbox: mounts, environment; stage_spec, the one SandboxSpec builder (limits)
    evaluate      the EVAL stage: two model servers and the scorer
    outcome       the one outcome ladder: sandbox result (+ scorer result) -> status, reason
    report        what the agent reads after a run
    logs, gpu     train.log (append, tail, steps/s); peak GPU memory polled from outside
    scorer        the trusted scorer (val bytes, loss, hidden checks)
    evalcmd       eval.command: the human's frozen eval script in its own sandbox
    evalsplit     eval.model: that script without agent code, the model in other sandboxes
    evalstage     EvalJob and the one dispatch through registry.EVALUATORS (EVAL and final)
    relay         the split's trusted relay: every answer checked, hidden re-asks
    enqueue       --queue: a run snapshotted into runs/NNNN/ now, run from there by the scheduler
    rayexec, raynode  the Ray executor: a wave's runs on a cluster's nodes
    warm, warmhold, warmspec  the next run's sandboxes warmed while the agent thinks (AUTORESEARCH_WARM=1)
    evalclient    the eval script's handle under its first name (autoresearch.inside.evalclient)

What runs inside a sandbox is in autoresearch/inside/, the record a run leaves in autoresearch/record/.
The front door: loop/ and cli/ import `from autoresearch.run import run_experiment, ...`; names load
on first use, so `./run.sh`'s start-up pays only for what it runs.
"""
from __future__ import annotations

from ..frontdoor import lazy

# module -> the names it lends the front door
_MODULES: dict[str, tuple[str, ...]] = {
    "evalcmd": ("frozen_code",),
    "evalstage": ("EvalJob", "evaluator_of", "measure"),
    "inputs": ("data_folder",),
    "interpreter": ("InterpreterError", "probe", "torch_version"),
    "logs": ("log_tail",),
    "main": ("build_parser",),
    "progress": ("LogFollower", "clock"),
    "runner": ("RunOptions", "run_experiment"),
    "seeds": ("fixed_seeds", "overriders", "reads_harness_seed", "seed_override",
              "with_seed"),
    "specs": ("base_env", "gpu_request", "repo_env"),
    "warm": ("discard_all",),
}
_EXPORTS = {n: (m, n) for m, names in _MODULES.items() for n in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS)

