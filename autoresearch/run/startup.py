"""TRAIN's trusted start-up, inside the sandbox: warm up, say that agent code starts, run it.

    python -I startup.py run  SCRIPT [ARGS...]   the train script, in this process
    python -I startup.py exec ARGV...            run.launcher / run.command: exec'd after the warm-up
    python -I startup.py module NAME [ARGS...]   a trusted module (the EVAL model server) after the
                                                 warm-up, as `python -m NAME` would run it; it says
                                                 protocol.AGENT_STARTS itself, after GO
    python -I startup.py wait GO_DIR run|exec ...  the next run's TRAIN, warmed while the agent thinks
                                                 (run/warm.py): after the warm-up it waits until the
                                                 runner writes GO_DIR/go.json (the work copy is then
                                                 complete), takes the run's seed from it, and goes on
                                                 as `run`/`exec` would
    python -I startup.py gate GO_DIR run|exec ...  a cold TRAIN beside the model servers: the same wait,
                                                 for the runner's GO once their warm-up is over too

The budget is the agent's compute (ARCHITECTURE rule 12): the interpreter's start and the heavy
imports (torch, numpy) are the harness's cost, not the experiment's, and on a busy machine they
can take many seconds. So this file imports them first, then prints MARKER; the sandbox starts
the budget's clock when it sees the marker in the output (SandboxSpec.start_marker) and kills
agent code at budget + the save margin after it. Until the marker the run gets
budget.grace_seconds, uncounted.

No agent code may run before the marker: -I ignores PYTHONPATH, the current folder, the user
site and PYTHON* variables, so neither a sitecustomize.py nor a torch.py in the work copy is
imported by the warm-up. `run` then sets up what `python SCRIPT` would have (sys.argv, sys.path
with the script's folder and PYTHONPATH first, unbuffered output, no bytecode) and runs the
script as __main__. Standard library only: it runs under whatever run.python is.
"""
import json
import os
import sys
import time

MARKER = "[autoresearch: start-up done; agent code starts now, and with it the budget's clock]"
SERVE = ("numpy", "torch", "torch.nn", "torch.nn.functional")        # what a model's forward pass needs
WARM = SERVE + ("torch.optim", "torch._dynamo")   # and training: AdamW's constructor imports _dynamo
# (1.3 CPU-s of the 2.5 on a 2-core machine). A model server (module mode) answers with a forward
# pass only, so its warm-up leaves them out: the two servers' warm-ups overlap TRAIN's budget, and
# on a small machine every CPU-second they take is one the training does not get.


def warm_up(names: tuple = WARM) -> float:
    """Import the heavy modules the project's interpreter has; returns the seconds it took."""
    t0 = time.monotonic()
    import importlib
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:                               # noqa: BLE001 -- a missing module is the script's to report
            pass
    return time.monotonic() - t0


WARMED = "[autoresearch: warm-up"      # a model server's line once its warm-up is over (module mode)
GO_FILE = "go.json"
GO_ENV = ("AUTORESEARCH_SEED",)         # what differs between one warm run and the next: nothing else may
GO_POLL_S = 0.005
OFF = "off"                             # go.json {"off": true}: end before agent code (trainstage.py)
CALLED_OFF = 3


def wait_for_go(go_dir: str) -> None:
    """Block until the runner's GO_DIR/go.json exists (it is renamed into place whole), then take
    the run's own values of GO_ENV from it, or exit when it calls the run off. Anything else in it
    is ignored."""
    path = os.path.join(go_dir, GO_FILE)
    while not os.path.exists(path):
        time.sleep(GO_POLL_S)
    with open(path, encoding="utf-8") as f:
        go = json.load(f)
    if go.get(OFF) is True:                     # the runner's set-up failed: no agent code at all
        sys.stderr.write("[autoresearch: the runner called this run off before agent code]\n")
        sys.exit(CALLED_OFF)
    env = go.get("env", {})
    for k in GO_ENV:
        if isinstance(env.get(k), str):
            os.environ[k] = env[k]


def _as_python_would(script: str) -> None:
    """sys.argv, sys.path and the output as `python SCRIPT` (with this environment) has them."""
    env = os.environ
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [os.path.dirname(os.path.abspath(script))] + extra
    if env.get("PYTHONDONTWRITEBYTECODE"):
        sys.dont_write_bytecode = True
    if env.get("PYTHONUNBUFFERED"):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True, write_through=True)   # type: ignore[union-attr]
            except (AttributeError, ValueError):
                pass


def main(argv: list) -> int:
    go_dir = None
    gate = argv[0] if argv and argv[0] in ("wait", "gate") else None
    if gate is not None and len(argv) >= 4 and argv[2] in ("run", "exec"):
        go_dir, argv = argv[1], argv[2:]
    if len(argv) < 2 or argv[0] not in ("run", "exec", "module"):
        print("usage: startup.py run SCRIPT [ARGS...] | exec ARGV... | module NAME [ARGS...] "
              "| wait|gate GO_DIR run|exec ...", file=sys.stderr)
        return 2
    took = warm_up(SERVE if argv[0] == "module" else WARM)
    if go_dir is not None and gate == "wait":
        sys.stderr.write(f"[autoresearch: warm-up {took:.1f} s, done before this run was asked for]\n")
        sys.stderr.flush()
        wait_for_go(go_dir)
        took = 0.0
    elif go_dir is not None:
        t0 = time.monotonic()
        wait_for_go(go_dir)
        sys.stderr.write(f"[autoresearch: then {time.monotonic() - t0:.1f} s for the model servers' warm-up]\n")
    if argv[0] == "module":
        sys.stderr.write(f"{WARMED} {took:.1f} s]\n")
        sys.argv = argv[1:]
        _as_python_would(os.path.join(os.getcwd(), "-m"))   # `python -m` puts the current folder first
        import runpy
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    sys.stdout.flush()
    sys.stderr.write(f"\n{MARKER} (warm-up {took:.1f} s)\n")
    sys.stderr.flush()
    if argv[0] == "exec":
        try:
            os.execvp(argv[1], argv[1:])
        except OSError as e:
            print(f"cannot run {argv[1]!r}: {e.strerror}", file=sys.stderr)
            return 127
    script = argv[1]
    sys.argv = argv[1:]
    _as_python_would(script)
    import runpy
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
