"""program.md's sections, each a strict pydantic model: the metric, the budget, the noise rule,
the sandbox, how a run executes (run, eval, executor), the phases and the end-of-night notice.
`autoresearch.program` assembles them into Program and parses the file."""
from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..editable import is_literal, pattern_problem
from ..hostenv import check_env, check_folder, check_python
from ..registry import (AUTO, BACKEND_CHOICES, BUILTIN, DEFAULT_EXECUTOR, DEFAULT_MODE, EXECUTORS, MODES,
                        REMOTE_EXECUTORS, from_log, remote, words)


_OUTPUT_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(_Strict):
    name: str = "val_bpb"                        # the metric's name in results.tsv and the record
    direction: Literal["minimize", "maximize"] = "minimize"   # which way is better
    # The sane range for this task, in every mode: a value below floor or above ceiling is not a
    # better model but a leak, a forgery or a bug, and the run is marked invalid (never kept).
    floor: float | None = None
    ceiling: float | None = None                 # see floor

    @model_validator(mode="after")
    def _range(self) -> "Metric":
        if self.floor is not None and self.ceiling is not None and self.floor >= self.ceiling:
            raise ValueError(f"metric: floor {self.floor:g} must be below ceiling {self.ceiling:g}")
        return self

    def out_of_range(self, v: float) -> str | None:
        """Why v is past the floor or the ceiling (None: it is within them)."""
        if self.floor is not None and v < self.floor:
            return f"{self.name} {v:.6g} is below metric.floor {self.floor:g}"
        if self.ceiling is not None and v > self.ceiling:
            return f"{self.name} {v:.6g} is above metric.ceiling {self.ceiling:g}"
        return None

    def better(self, a: float, b: float) -> bool:
        """True when a is strictly better than b."""
        return a < b if self.direction == "minimize" else a > b

    def improvement(self, new: float, best: float) -> float:
        """How much better new is than best (positive = better), in metric units."""
        return best - new if self.direction == "minimize" else new - best


RUN_OVERHEAD_S = 120.0   # sandbox start-up, data copy, the report: beyond the stages' own limits



# What the built-in evaluation (run.mode two_stage: autoresearch's trusted scorer) measures: it
# declares its metric in registry.EVALUATORS, and a program.md that says otherwise is refused (Program's validator), so
# the loop can never keep the worst model by a flipped direction. eval_command and inline modes
# declare theirs in program.md.
BUILTIN_METRIC = Metric(name=BUILTIN[0], direction=BUILTIN[1])


SAVE_MARGIN = 0.05                  # agent code is killed at budget x (1 + this) after it starts ...
SAVE_MARGIN_MIN_S = 3.0             # ... or at budget + this, if later (budgets under 60 s): time to save, not to train


def save_margin(budget: float) -> float:
    """Seconds agent code gets past its budget to save (ARCHITECTURE rule 12): a few percent."""
    return max(SAVE_MARGIN_MIN_S, SAVE_MARGIN * budget)


class Budget(_Strict):
    """train_seconds is agent compute: its clock starts when agent code starts (after the trusted
    warm-up, which grace_seconds bounds and which is not counted), and agent code is killed at
    train_seconds + save_margin."""
    train_seconds: float = Field(300, gt=0)      # agent compute per run; killed at this plus a small margin
    grace_seconds: float = Field(60, ge=0)       # the trusted start-up (interpreter, imports): not counted
    eval_seconds: float = Field(300, gt=0)       # the EVAL stage's own hard limit

    def experiment_seconds(self) -> float:
        """The longest one ./run.sh may take, wall clock: TRAIN (start-up + budget + save margin),
        EVAL, and the harness's margin. The one bound behind "still running?", the Bash tool
        timeout the hooks need, doctor's check of it, and the overnight driver's watchdog."""
        return (self.train_seconds + save_margin(self.train_seconds) + self.grace_seconds + self.eval_seconds
                + RUN_OVERHEAD_S)


class Noise(_Strict):
    k_sigma: float = Field(2.0, ge=0)            # threshold = max(min_improvement, k_sigma * sigma)
    confirm_margin: float = Field(0.0, ge=0)     # wins by less than threshold + this are re-run with another seed
    calibrate_runs: int = Field(3, ge=2)         # runs `autoresearch calibrate` makes to measure sigma


def _gpus(v: Any) -> Union[str, int, list[int]]:
    """sandbox.gpus in one spelling: "all" | "none" | a count >= 1 | distinct indices >= 0."""
    fix = "write all, none, a count such as 2, or device indices such as [0, 3]"
    if isinstance(v, str) and "," in v:          # `gpus: 0,3` reads as a string in YAML: the indices
        v = [p.strip() for p in v.split(",")]
    if isinstance(v, list):
        if not v:
            raise ValueError(f"an empty list selects no GPU: write none; else {fix}")
        bad = [x for x in v if isinstance(x, bool) or not (isinstance(x, int) or isinstance(x, str) and x.isdigit())]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a GPU index (nvidia-smi -L numbers them 0, 1, ...): {fix}")
        ids = [int(x) for x in v]
        if neg := [i for i in ids if i < 0]:
            raise ValueError(f"{neg[0]} is not a GPU index (nvidia-smi -L numbers them 0, 1, ...): {fix}")
        if dup := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"GPU {dup[0]} is listed twice: {fix}")
        return ids
    if v in ("all", "none"):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ValueError(f"{v} is not a GPU count: for no GPU write none; else {fix}")
        return v
    if isinstance(v, str) and v.strip().isdigit():
        raise ValueError(f"{v!r} is a string: a count is written unquoted (gpus: {v.strip()}), "
                         f"one device as a list (gpus: [{v.strip()}])")
    raise ValueError(f"{v!r} is not a GPU selection: {fix}")


class Sandbox(_Strict):
    # the sandbox: auto (docker if an engine answers, else bwrap) or one by name; none isolates nothing
    backend: Literal[BACKEND_CHOICES] = AUTO          # type: ignore[valid-type]  (registry.py)
    memory_gb: float = Field(8, gt=0)            # memory cap of a stage (cgroup or docker)
    pids: int = Field(512, ge=16)                # process cap of a stage
    disk_gb: float = Field(4, gt=0)              # cap on runs/NNNN/out/ while a run goes (a checkpoint fits)
    image: str = "autoresearch-sandbox:latest"   # docker: the image (container/Dockerfile), else a local one
    # GPUs the run gets: all visible (CUDA_VISIBLE_DEVICES narrows), none, the first N, or host indices
    gpus: Union[Literal["all", "none"], int, list[int]] = "all"
    shm_gb: float | None = Field(None, gt=0)     # /dev/shm: DataLoader workers and NCCL (counts toward memory_gb)
    home: str | None = None                      # a host folder as HOME (read-only); unset: a fresh temporary one
    home_writable: bool = False                  # HOME writable in TRAIN (EVAL then gets a fresh one)
    cache: str | None = None                     # a host folder shared by runs: writable in TRAIN, $XDG_CACHE_HOME
    cache_eval: bool = False                     # the cache also shown to EVAL and final, read-only

    _gpus = field_validator("gpus", mode="before")(_gpus)

    @field_validator("home", "cache")
    @classmethod
    def _folder(cls, v: Any) -> Any:
        return v if v is None else check_folder(v, "/data/hf-cache", folder=True)

    @model_validator(mode="after")
    def _shm_fits(self) -> "Sandbox":
        if self.shm_gb is not None and self.shm_gb > self.memory_gb:
            raise ValueError(f"shm_gb: {self.shm_gb:g} GB of /dev/shm does not fit in memory_gb "
                             f"({self.memory_gb:g}): lower shm_gb or raise memory_gb")
        return self

    @property
    def shm(self) -> float:
        """/dev/shm in GB: shm_gb, else 1 GB or half of memory_gb when that is smaller."""
        return self.shm_gb if self.shm_gb is not None else min(1.0, self.memory_gb / 2)


class Executor(_Strict):
    """Who runs a wave (`./run.sh -m ... --queue`): `local` runs up to `slots` sandboxed runs at once on
    this machine, each on its own GPU (or its share of the CPU cores); `ray` sends each run as a task
    to the Ray cluster at `address`, asking for `resources` (default: one GPU)."""
    # local: slots on this machine; ray: tasks on the Ray cluster at `address`
    kind: Literal[tuple(EXECUTORS)] = DEFAULT_EXECUTOR   # type: ignore[valid-type]  (registry.py)
    slots: int | None = Field(None, ge=1, le=256)   # None: one per GPU the sandbox may use, else 1
    address: str | None = None                      # ray: "auto", "ray://head:10001", "10.0.0.5:6379"
    resources: dict[str, float] = {}                 # ray: per task, e.g. {GPU: 1} (the default: gpus_per_run)
    # GPUs one run takes (an 8-rank torchrun or Lightning run: 8): a local wave packs runs by it,
    # each slot gets that many GPUs of its own; ray asks each task for that many
    gpus_per_run: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _ray_needs(self) -> "Executor":
        if not remote(self.kind) and (self.address or self.resources):
            kinds = words([f"kind: {k}" for k in REMOTE_EXECUTORS])
            raise ValueError(f"executor: address and resources are for {kinds}; remove them or set {kinds}")
        return self


_LAUNCHER_WORD = re.compile(r"[A-Za-z0-9_./=:,+@%-]+")


def _launcher(v: Any) -> Any:
    """run.launcher as argv words: a list, or a string split like a shell would, with no shell
    syntax in any word (it is an argv prefix, never run by a shell)."""
    try:
        words = shlex.split(v) if isinstance(v, str) else v
    except ValueError as e:                       # an unclosed quote
        raise ValueError(f"{v!r}: {e}") from None
    if isinstance(words, list):                   # [torchrun, --nproc-per-node, 2]: YAML reads 2 as a number
        words = [str(w) if isinstance(w, int) and not isinstance(w, bool) else w for w in words]
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise ValueError("give the launcher's words, such as torchrun --nproc-per-node 2 "
                         "or [torchrun, --nproc-per-node, '2']")
    for w in words:
        if not _LAUNCHER_WORD.fullmatch(w):
            raise ValueError(f"{w!r}: a launcher word may hold only letters, digits and _ . / = : , + @ % - "
                             "(no shell syntax: it is not run by a shell)")
    return words


def _argv(v: Any) -> Any:
    """run.command and eval.command, one rule: argv words, never run by a shell, so any text is one
    word as written (`${oc.env:DATA}`, a quoted 'a b'); a string is split like a shell would; YAML
    numbers become words. Only an empty word, a NUL or a line break is refused."""
    if v is None:
        return v
    try:
        words = shlex.split(v) if isinstance(v, str) else v
    except ValueError as e:                       # an unclosed quote
        raise ValueError(f"{v!r}: {e}") from None
    if isinstance(words, list):
        words = [str(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else w for w in words]
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise ValueError("give the command's words, such as python train.py --config cfg.yaml "
                         "or [python, train.py, --config, cfg.yaml]")
    for w in words:
        if not w or "\0" in w or "\n" in w or "\r" in w:
            raise ValueError(f"{w!r}: a command word may not be empty or hold a NUL or a line break")
    return words


class Run(_Strict):
    """How an experiment runs. `two_stage` (default): trusted EVAL stage computes the metric.
    `eval_command`: TRAIN, then the human's frozen `eval.command` in its own sandbox writes the metric.
    `inline`: for legacy code that can only print its own metric -- a weaker guarantee, the last resort."""
    # who measures: scorer, eval.command, or the log
    mode: Literal[MODES] = DEFAULT_MODE          # type: ignore[valid-type]  (registry.py's EVALUATORS)
    train_script: str = "train.py"               # the file the agent edits and TRAIN runs
    command: list[str] | None = None             # inline / eval_command mode: the training command
    metric_regex: str | None = None              # inline mode: a regex with one group capturing the metric
    # TRAIN stage only: argv words put before the training script (the interpreter left out), such as
    # torchrun --nproc-per-node 2; the EVAL model server stays one process
    launcher: list[str] | None = None
    # TRAIN and the EVAL model server run under it: the repo's venv (.venv/bin/python, relative to
    # the project) or a conda env's python (absolute); unset: the harness's own (hostenv.py)
    python: str | None = None
    env: dict[str, str] = {}                     # variables for both stages (WANDB_MODE: offline)
    # folders the code writes its results into (nanoGPT's out/, Hydra's outputs/, wandb/): each
    # stage's work copy gets them empty and writable, not linked read-only to the project's own
    # (which earlier runs by hand left there, untracked)
    outputs: list[str] = []
    # folders of the project put on the model servers' import path (besides the project and the
    # loaded file's own folder), for a repo whose code imports `from utils import ...` out of src/:
    # set here by the human, never by PYTHONPATH in run.env (the harness owns that)
    source_roots: list[str] = []

    _launcher = field_validator("launcher", mode="before")(_launcher)
    _command = field_validator("command", mode="before")(_argv)

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str]) -> list[str]:
        out = []
        for f in v:
            parts = PurePosixPath(f).parts
            if not parts or f.startswith("/") or ".." in parts or not _OUTPUT_NAME.fullmatch(f) \
                    or parts[0] in ("runs", ".git", ".autoresearch", "."):
                raise ValueError(f"run.outputs {f!r}: a project-relative folder the code writes into, such as "
                                 "out or outputs (not runs/, .git or .autoresearch; no '..', no glob)")
            out.append(str(PurePosixPath(f)))
        return list(dict.fromkeys(out))

    @field_validator("source_roots")
    @classmethod
    def _roots(cls, v: list[str]) -> list[str]:
        for f in v:
            parts = PurePosixPath(f).parts
            if not parts or f.startswith("/") or ".." in parts or not _OUTPUT_NAME.fullmatch(f):
                raise ValueError(f"run.source_roots {f!r}: a project-relative folder of the repo's code, such as "
                                 "src (no '..', no glob)")
        return list(dict.fromkeys(str(PurePosixPath(f)) for f in v))
    _python = field_validator("python", mode="before")(check_python)
    _env = field_validator("env", mode="before")(check_env)

    @model_validator(mode="after")
    def _inline_needs(self) -> "Run":
        if from_log(self.mode) and (not self.command or not self.metric_regex):
            raise ValueError("inline mode needs run.command and run.metric_regex")
        return self


class Eval(_Strict):
    """The human's evaluation script (run.mode: eval_command), frozen at init: `files` are never
    editable and always run as committed at the run branch's base commit, never from the work tree.
    It runs in a fresh EVAL sandbox after TRAIN (no network; the checkpoint in $AUTORESEARCH_OUT
    read-only; the mounts for stage eval) and writes {"value": <number>} to $AUTORESEARCH_METRIC_FILE,
    a folder only it gets. `autoresearch final` runs it again with the final mounts."""
    command: list[str] = Field(min_length=1)     # argv (python is the sandbox's), e.g. python eval.py
    files: list[str] = Field(min_length=1)       # the script and the helpers it imports: frozen
    # The evaluator split: the script runs WITHOUT the project and calls evalclient.model(inputs);
    # the agent's file.py:function(out_dir) -> predict(dict of arrays) -> dict answers in another sandbox
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py:[A-Za-z_][A-Za-z0-9_]*$")
    checks: float = Field(0.1, ge=0, le=1)       # split: share of requests asked again of a second server
    batch_independent: bool = True               # split: a re-asked row gets other batch-mates
    tolerance: float = Field(1e-4, ge=0)         # split: a re-asked answer's difference, in `compare`'s units
    # split: what the script scores of each output (name, or "*" for all): a re-ask is compared after
    # that normalisation, within `tolerance` ABSOLUTE in its units -- log_softmax (nats over the last
    # axis: cross-entropy), softmax (probabilities), argmax (exact: accuracy), raw (the values as
    # scored: MSE), spread (relative to the row's spread: the legacy mode). Undeclared: raw and spread at
    # once, the larger difference within `tolerance` (neither sentinels nor scaling down widens it)
    compare: dict[str, Literal["log_softmax", "softmax", "argmax", "raw", "spread"]] = {}
    max_mb: float = Field(256, gt=0, le=16384)   # split: largest request or answer

    _command = field_validator("command", mode="before")(_argv)      # one rule with run.command

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and (".." in Path(v.split(":")[0]).parts or v.startswith("/")):
            raise ValueError(f"eval.model {v!r}: a project-relative file and function, e.g. model.py:load")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: list[str]) -> list[str]:
        for f in v:
            if not is_literal(f) or (why := pattern_problem(f)) and "harness" not in why:
                raise ValueError(f"{f!r}: name each file of the eval script by its project-relative path "
                                 "(eval.py, tools/metrics.py), no folder or glob")
        return list(dict.fromkeys(v))


class Phase(_Strict):
    name: str = Field(min_length=1)              # the phase's name (`phase:` names the current one)
    focus: str = ""                              # what the agent works on in this phase
    max_experiments: int = Field(20, ge=1)       # experiments before the phase is spent
    web: bool = False                            # the agent may search the web in this phase
    editable: list[str] = []                     # extra editable files in this phase


class Notify(_Strict):
    """An end-of-night message, sent by trusted host code (`autoresearch overnight`), never by the
    agent: a shell command (the summary on stdin and in $AUTORESEARCH_SUMMARY) and/or a webhook
    (a JSON POST `{"text": summary, ...}`, e.g. a Slack incoming webhook)."""
    command: str | None = None                   # a shell command: the summary on stdin
    webhook: str | None = Field(None, pattern=r"^https?://")   # a URL that gets the summary as JSON
    timeout_seconds: float = Field(30, gt=0, le=300)           # for either
