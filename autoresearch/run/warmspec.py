"""A warm run's staged sandboxes as data (run/warm.py): where a holder keeps what runs/NNNN will
hold, the spec a holder runs for a stage, and the key that says two specs are the same sandbox."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

from ..atomic import write_atomic
from ..record import Layout, state_folder
from ..sandbox import Mount, SandboxSpec
from .startup import GO_ENV, GO_FILE, OFF


@dataclasses.dataclass(frozen=True)
class Staged:
    """One holder's folder, <state>/warm/NNNN/."""
    dir: Path

    script = property(lambda s: s.dir / "script")
    out = property(lambda s: s.dir / "out")
    go = property(lambda s: s.dir / "go")
    log = property(lambda s: s.dir / "train.log")
    state = property(lambda s: s.dir / "state.json")
    result = property(lambda s: s.dir / "result.json")
    claimed = property(lambda s: s.dir / "claimed")
    holder_log = property(lambda s: s.dir / "holder.log")

    @property
    def run_id(self) -> int:
        return int(self.dir.name)


def warm_root(root: Path) -> Path:
    return state_folder(root) / "warm"


def train_work(lay: Layout) -> Path:
    """TRAIN's work copy (workcopy.work_copy's place for "train"): a holder's sandbox mounts it."""
    return lay.scratch / "work" / "train"


def staged(spec: SandboxSpec, lay: Layout, st: Staged) -> SandboxSpec:
    """Any stage's `spec` with the script's copy and out/ staged (runs/NNNN does not exist yet)."""
    subs = {str(lay.script_copy): st.script, str(lay.out): st.out}
    return dataclasses.replace(spec, mounts=[Mount(subs.get(str(m.source), m.source), m.target, m.writable)
                                             for m in spec.mounts])


def gated(spec: SandboxSpec, go: Path, wait_s: float = 0.0, mode: str = "gate") -> SandboxSpec:
    """TRAIN's `spec` with its start-up waiting, after the warm-up, for `go`/go.json (the folder
    mounted read-only; its allowance: the grace plus `wait_s`). send_go lets it go. `mode`:
    startup.py's "gate" (a cold run) or "wait" (a holder's, warm.py)."""
    python, flag, startup, *rest = spec.argv
    return dataclasses.replace(spec, argv=[python, flag, startup, mode, str(go), *rest],
                               mounts=[*spec.mounts, Mount(go, str(go))], startup_s=spec.startup_s + wait_s)


def send_go(go: Path, spec: SandboxSpec) -> None:
    """GO for a gated TRAIN: go.json, carrying the run's own values of startup.GO_ENV."""
    write_atomic(go / GO_FILE, json.dumps({"env": {k: spec.env[k] for k in GO_ENV if k in spec.env}}), mode=0o644)


def await_warm_up(servers, within_s: float, stop: threading.Event | None = None) -> None:
    """Until the model servers (evalstage.WarmServers; None: there are none) have warmed up, for
    at most `within_s`, or until `stop` is set: GO waits for this, warm or cold alike, so no
    warm-up takes the budget's CPU."""
    end = time.monotonic() + within_s
    while (servers is not None and not servers.warmed() and time.monotonic() < end
           and not (stop is not None and stop.is_set())):
        time.sleep(0.01)


def call_off(go: Path) -> None:
    """A gated TRAIN's start-up ends without running agent code (the runner's set-up failed)."""
    write_atomic(go / GO_FILE, json.dumps({OFF: True}), mode=0o644)


def warmed(spec: SandboxSpec, lay: Layout, st: Staged, wait_s: float) -> SandboxSpec:
    """`spec` (TRAIN's, as the runner builds it for `lay`) as a holder runs it: staged, gated on
    go/ (its allowance: the grace plus `wait_s`), the log staged."""
    return dataclasses.replace(gated(staged(spec, lay, st), st.go, wait_s, "wait"), log_path=st.log)


def spec_key(spec: SandboxSpec) -> str:
    """What must be equal for a holder's sandbox to be the run's: everything but the log's path, the
    start-up's allowance and the per-run values of GO_ENV (go.json carries those)."""
    env = {k: v for k, v in spec.env.items() if k not in GO_ENV}
    d = {"argv": spec.argv, "mounts": [(str(m.source), m.target, m.writable) for m in spec.mounts], "env": env,
         "cwd": spec.cwd, "timeout_s": spec.timeout_s, "memory": spec.memory_bytes, "pids": spec.pids,
         "gpus": repr(spec.gpus), "shm": spec.shm_bytes, "disk": spec.disk_bytes, "owner": spec.owner,
         "marker": (spec.start_marker or b"").decode(), "log_limit": spec.log_limit,
         "stdin": spec.stdin_data is not None, "capture": spec.capture_stdout}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
