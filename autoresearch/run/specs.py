"""What each stage's sandbox is given: the mounts (the project read-only with runs/, the train
script and any val/test folder replaced, and what the flow table (autoresearch/record/flows.py) does not
show the stage covered; the stage's writable work copy, in the state folder outside the project;
the runtime; the package for the model server), the environment (budget, seed, out/ folder), and
the limits. The sandbox enforces them; tests/run/test_flow_mounts.py holds them to the flow table.
Every stage's SandboxSpec comes from stage_spec: the stage's own StageSpec over the run's
StageInputs, under program.md's limits (memory, pids, GPUs, /dev/shm, disk) and the owner label.

    TRAIN  runs in its work copy (workcopy.py: writable, counted in sandbox.disk_gb, gone after
           the stage), the project read-only at its path, the train split only, runs/NNNN/out/
           writable; behind the trusted start-up (startup.py: the budget counts agent code only),
           killed at budget + save_margin; run.launcher (torchrun ...) before the script.
    EVAL   one model server (autoresearch.inside.model_server behind the trusted warm-up, never
           launched; started with TRAIN, agent code only after the scorer's GO) in its own work copy:
           the project (less the ledger, .git and .autoresearch) and the checkpoint
           read-only, no data, the scorer's session on its stdin/stdout. `final` is the same
           stage to the model: the same folder names (eval-k), environment and mounts.
    sandbox.home is HOME (read-only; home_writable: writable in TRAIN, and EVAL gets a fresh one);
    sandbox.cache is $XDG_CACHE_HOME, writable in TRAIN, read-only in EVAL/final with cache_eval.
    Both get sandbox.gpus (resolved by the sandbox against the host) and sandbox.shm_gb of /dev/shm.
    Both run under run.python when set (its prefixes mounted read-only; the model server then
    finds our package on PYTHONPATH, so that interpreter needs numpy and torch), get run.env,
    and see the program.md mounts declared for their stage (eval, or final for `autoresearch final`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..record.flows import SERVER, TRAIN, hidden_from, state_home
from ..hostenv import stage_mounts
from ..program import Program
from ..program.sections import save_margin
from ..sandbox import Backend, GpuRequest, Mount, SandboxSpec, SandboxUnavailable, Session
from .inputs import load_prepare
from .interpreter import interpreter_mounts, resolve
from ..inside.protocol import AGENT_STARTS
from ..record import CHECKPOINT, RUNS_DIR, Layout, inside, state_id
from .startup import MARKER
from .workcopy import empty_work, work_copy

EVAL_NAME = "eval"              # the model servers' and eval.command's folder names, in EVAL and in final alike
STARTUP = Path(__file__).resolve().with_name("startup.py")
STARTUP_MARKER = MARKER.encode()


def project_mounts(lay: Layout, data: Path | None, stage: str = TRAIN) -> list[Mount]:
    """The project read-only, with runs/ replaced by the skeleton, the train script by the
    run's hashed copy, every other file of the editable set by its snapshot copy, any
    val/test split folder inside the project hidden, and every project entry the flow table
    does not show `stage` (flows.hidden_from: .autoresearch, and for the model servers the
    ledger and .git) covered by an empty stand-in."""
    root = lay.root
    mounts = [Mount(root, str(root)),
              Mount(lay.skeleton(), str(root / RUNS_DIR)),
              Mount(lay.script_copy, str(root / lay.script))]
    for name in hidden_from(stage):
        p = root / name
        if p.is_symlink() or not p.exists():
            continue
        mounts.append(Mount(lay.empty() if p.is_dir() else lay.empty_file(), str(p)))
    mounts += [Mount(copy, target) for copy, target in lay.code_copies()]
    if data is not None:
        for split in ("val", "test"):
            d = data / split
            if d.is_dir() and inside(d, root):
                mounts.append(Mount(lay.empty(), str(d)))
    return mounts


def runtime_mounts(backend: Backend, root: Path) -> list[Mount]:
    """The backend's runtime mounts, less those inside the project: the project mount already
    shows them, and a target under a symlink there (a project's .venv linked to a shared one)
    cannot be mounted onto; the link's resolved target is itself a runtime mount."""
    return [m for m in backend.runtime().mounts if not inside(Path(m.target), root)]


def package_mount() -> tuple[list[Mount], str]:
    """The autoresearch package (for the evaluator), and the PYTHONPATH entry that finds it."""
    pkg = Path(__file__).resolve().parents[1]
    return [Mount(pkg, str(pkg))], str(pkg.parent)


def base_env(backend: Backend, lay: Layout, home: str, budget: float, seed: int) -> dict[str, str]:
    env = dict(backend.runtime().env)
    env.update({
        "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(lay.root),
        "AUTORESEARCH_TRAIN_SECONDS": f"{budget:g}", "AUTORESEARCH_SEED": str(seed),
        "AUTORESEARCH_OUT": str(lay.out),
    })
    for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def repo_env(env: dict[str, str], program: Program, root: Path) -> dict[str, str]:
    """The environment with the repo's own: run.python's bin/ first on PATH (its console scripts,
    a `python` subprocess), then run.env (which may replace the harness's defaults, not its keys)."""
    env = dict(env)
    if (interp := resolve(root, program)) is not None:
        env["PATH"] = f"{Path(interp.path).parent}:{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    return {**env, **program.run.env}


def python_of(backend: Backend, program: Program, root: Path) -> str:
    """The interpreter both stages run: run.python, else the backend's."""
    interp = resolve(root, program)
    return interp.path if interp is not None else backend.runtime().python


def environment_mounts(backend: Backend, program: Program, root: Path, stage: str) -> list[Mount]:
    """run.python's prefixes and the program.md mounts this stage sees, all read-only."""
    interp = resolve(root, program)
    mounts = interpreter_mounts(interp, backend, root) if interp is not None else []
    return mounts + [Mount(p.resolve(), str(p)) for p in stage_mounts(program.mounts, stage)]


def hidden_splits(program: Program, lay: Layout, data: Path | None, stage: str) -> list[Mount]:
    """A declared mount (or a read-only sandbox.home/cache) must not show what the flow table keeps
    from every stage: the prepared data's val/test splits (a mounted ~/.cache), the state folders
    (the eval logs: a mounted HOME) and the signing keys: an empty folder over each, at every path
    the mount shows it under."""
    shown = stage_mounts(program.mounts, stage) + [Path(m.target) for m in home_cache(program, data, stage)[0]]
    return hidden_under(lay, shown, data)


def hidden_under(lay: Layout, shown: list[Path], data: Path | None) -> list[Mount]:
    """hidden_splits for folders `shown` at their paths."""
    private = [Path(state_home()), Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "autoresearch"]
    private += [data / split for split in ("val", "test")] if data is not None else []
    out = []
    for folder in shown:
        real = folder.resolve()
        for d in private:
            d = d.resolve()
            if d.is_dir() and inside(d, real):
                out.append(Mount(lay.empty(), str(folder / d.relative_to(real))))
    return list(dict.fromkeys(out))


def home_cache(program: Program, data: Path | None, stage: str) -> tuple[list[Mount], dict[str, str]]:
    """sandbox.home and sandbox.cache for one stage: (mounts, env). Written only in TRAIN, read in
    EVAL only when that cannot carry TRAIN's writes to the scorer's side unasked (README's threat
    model). A writable one may not hold the prepared data: TRAIN could rename the folder and put a
    forged val split where the host-side scorer reads it."""
    sb, mounts, env = program.sandbox, [], {}
    train = stage == "train"
    for field, path, writable, shown, var in (
            ("sandbox.home", sb.home, sb.home_writable, train or not sb.home_writable, "HOME"),
            ("sandbox.cache", sb.cache, True, train or sb.cache_eval, "XDG_CACHE_HOME")):
        if path is None or not shown:
            continue
        real = Path(path).resolve()
        if writable and train and data is not None and (inside(data, real) or inside(real, data)):
            raise SandboxUnavailable(f"{field}: {path} holds the prepared data ({data}), and TRAIN may write it: "
                                     f"name a folder that does not hold {data} (such as {real}/hf), or set "
                                     f"AUTORESEARCH_DATA to a data folder outside it")
        mounts.append(Mount(real, path, writable=writable and train))
        env[var] = path
    return mounts, env


def gpu_request(program: Program) -> GpuRequest:
    """program.md's sandbox.gpus as the sandbox's request (the backends resolve it on the host)."""
    g = program.sandbox.gpus
    return None if g == "none" else tuple(g) if isinstance(g, list) else g


@dataclass(frozen=True)
class StageInputs:
    """What every stage's sandbox is built from: the backend, program.md, the run's layout, the
    environment every stage starts from (base_env + repo_env), prepare.py's data folder (None: none)."""
    sandbox: Backend
    program: Program
    lay: Layout
    env: dict[str, str]
    data: Path | None = None


@dataclass(frozen=True)
class StageSpec:
    """One stage's sandbox as what differs between stages; stage_spec adds what they all share
    (program.md's sandbox limits, the GPUs, the owner label)."""
    argv: list[str]
    mounts: list[Mount]
    env: dict[str, str]
    cwd: Path
    log: Path
    timeout_s: float
    session: Session | None = None
    start_marker: bytes | None = None         # behind the trusted start-up: timeout_s counts from it
    startup_s: float = 0.0
    disk_bytes: int | None = None             # None: sandbox.disk_gb


def stage_spec(inp: StageInputs, st: StageSpec) -> SandboxSpec:
    """The one SandboxSpec builder: `st` under program.md's sandbox limits (memory, pids, GPUs,
    /dev/shm, disk), labelled with the project's state id (docker reaps orphans per project)."""
    sb = inp.program.sandbox
    return SandboxSpec(argv=st.argv, mounts=st.mounts, env=st.env, cwd=str(st.cwd), timeout_s=st.timeout_s,
                       memory_bytes=int(sb.memory_gb * 2**30), pids=sb.pids, gpus=gpu_request(inp.program),
                       shm_bytes=int(sb.shm * 2**30), log_path=st.log, session=st.session,
                       start_marker=st.start_marker, startup_s=st.startup_s,
                       disk_bytes=int(sb.disk_gb * 2**30) if st.disk_bytes is None else st.disk_bytes,
                       owner=state_id(inp.lay.root))


def shared_mounts(inp: StageInputs, stage: str, flow: str, data: Path | None) -> tuple[list[Mount], dict[str, str]]:
    """What TRAIN, the model servers and eval.command all see, and the environment that goes with it:
    the runtime, run.python and the `stage` mounts, sandbox.home/cache, the held-out folders hidden
    under them, and the project as the flow table shows it to `flow` (with `data`'s splits hidden)."""
    backend, program, lay = inp.sandbox, inp.program, inp.lay
    home, home_env = home_cache(program, data, stage)
    mounts = runtime_mounts(backend, lay.root) + environment_mounts(backend, program, lay.root, stage) + home
    mounts += hidden_splits(program, lay, data, stage) + project_mounts(lay, data, flow)
    return mounts, {**inp.env, **home_env}


def train_argv(python: str, program: Program, lay: Layout, inline: bool, where: Path | None = None) -> list[str]:
    """The TRAIN command: the script under the sandbox's Python (inline: run.command, its python
    made the sandbox's), after run.launcher when set. A launcher runs the script with its own
    Python (torchrun, accelerate launch, deepspeed), so the interpreter is left out after one;
    a launcher word `python` is the sandbox's (mpirun -np 2 python). `where`: the work copy."""
    argv = list(program.run.command or []) if inline else [python, str((where or lay.root) / lay.script)]
    if inline and argv and argv[0] in ("python", "python3"):
        argv[0] = python
    if not program.run.launcher:
        return argv
    if argv and argv[0] == python:
        argv = argv[1:]
    return [python if w in ("python", "python3") else w for w in program.run.launcher] + argv


def with_startup(python: str, argv: list[str]) -> list[str]:
    """argv behind the trusted start-up (run/startup.py): the script in its process after the
    warm-up, or (a launcher, run.command) exec'd after it. -I: no agent file runs before it."""
    if len(argv) >= 2 and argv[0] == python and argv[1].endswith(".py"):
        return [python, "-I", str(STARTUP), "run", *argv[1:]]
    return [python, "-I", str(STARTUP), "exec", *argv]


def train_spec(inp: StageInputs, budget: float, argv: list[str], work: Path | None = None) -> SandboxSpec:
    """TRAIN's sandbox, run in `work` (its work copy; made here when None: argv then names the
    project's script, for callers that build no copy). argv runs behind the trusted start-up:
    the budget's clock starts when agent code does, and it is killed at budget + save_margin;
    the start-up itself gets budget.grace_seconds, uncounted."""
    program, lay, data = inp.program, inp.lay, inp.data
    work = work if work is not None else work_copy(lay, "train")
    mounts, env = shared_mounts(inp, "train", TRAIN, data)
    env["PYTHONPATH"] = ":".join([str(work), *(str(work / r) for r in program.run.source_roots)])
    if data is not None:
        mounts.append(Mount(data / "train", str(data / "train")))
        env["AUTORESEARCH_DATA"] = str(data)
    mounts += [Mount(lay.out, str(lay.out), writable=True), Mount(work, str(work), writable=True)]
    mounts += [m for m in package_mount()[0] if not inside(m.source, lay.root)]     # startup.py, read-only
    return stage_spec(inp, StageSpec(argv=with_startup(python_of(inp.sandbox, program, lay.root), argv),
                                     mounts=mounts, env=env, cwd=work, log=lay.log,
                                     timeout_s=budget + save_margin(budget), start_marker=STARTUP_MARKER,
                                     startup_s=max(program.budget.grace_seconds, 1.0)))


@dataclass(frozen=True)
class ServerSlot:
    """Which model server an EVAL sandbox is: the scorer's session with it, its log, the mounts
    declared for `stage` (eval or final), its number k, and how long it may wait for GO (`wait_s`)."""
    session: Session | None
    log: Path
    stage: str = "eval"
    k: int = 0
    wait_s: float = 0.0
    work: str = "fresh"                       # its work copy: fresh; "empty" (a warm holder's, filled later);
                                              # "fill" (the holder's, filled in place: its sandbox mounts it)


def eval_spec(inp: StageInputs, slot: ServerSlot) -> SandboxSpec:
    """Model server k's sandbox, in its own work copy: the project and checkpoint read-only, no
    data (but the mounts declared for `stage`), the scorer's session on stdin/stdout, its stderr
    (and anything agent code prints) to `log`. `final` gets exactly what EVAL gets (folder names,
    environment, mounts as the flow table shows model servers) but the mounts declared for it.
    It runs behind the trusted warm-up (startup.py module) and waits for the scorer's GO before
    agent code: eval_seconds counts from then; until then it may take the grace plus `wait_s`
    (started with TRAIN: TRAIN's longest)."""
    program, lay = inp.program, inp.lay
    pkg_mounts, pkg_path = package_mount()
    if slot.work == "empty":
        work = empty_work(lay, f"{EVAL_NAME}-{slot.k}")
    else:
        work = work_copy(lay, f"{EVAL_NAME}-{slot.k}", in_place=slot.work == "fill")
    mounts, env = shared_mounts(inp, slot.stage, SERVER, inp.data)
    mounts += [Mount(lay.out, str(lay.out))]
    mounts += [m for m in pkg_mounts if not inside(m.source, lay.root)] + [Mount(work, str(work), writable=True)]
    env.update({"PYTHONPATH": f"{work}:{pkg_path}", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    if "OMP_NUM_THREADS" not in env:                   # the servers run at once: share the cores, not fight
        from .scorer import SERVERS
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // SERVERS))
    argv = [python_of(inp.sandbox, program, lay.root), "-I", str(STARTUP), "module", "autoresearch.inside.model_server",
            "--project", str(work), "--script", lay.script,
            "--checkpoint", str(lay.out / CHECKPOINT), "--vocab", str(int(load_prepare(lay.root).VOCAB_SIZE))]
    argv += [f"--source-root={r}" for r in program.run.source_roots]
    return stage_spec(inp, StageSpec(argv=argv, mounts=mounts, env=env, cwd=work, log=slot.log,
                                     timeout_s=program.budget.eval_seconds, session=slot.session,
                                     start_marker=AGENT_STARTS.encode(),
                                     startup_s=max(program.budget.grace_seconds, 1.0) + slot.wait_s))
