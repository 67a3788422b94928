"""The flow table (ARCHITECTURE.md rule 10): every path and channel the harness uses, who writes
it and who may read it -- the single source the guard's path policy, every stage's mounts and the
README's threat model are derived from, so they cannot drift apart.

A leaf: the guard hook imports it on every tool call, so it imports nothing (plain classes and
frozensets; no typing, dataclasses or enum at run time).

Who (an actor writes or reads a place):
    agent:read   the research agent reading: Read, Bash's read-only forms (grep, find, git grep: the
                 guard's read check), and Grep/Glob/LS in CLI versions that offer them
    agent:edit   the research agent writing: Edit, Write, NotebookEdit (the guard's edit check)
    train        agent code in TRAIN (sees the train split)
    server       agent code in EVAL's model servers (sees validation windows over the protocol)
    eval.command the human's eval script in eval_command mode (and agent code it imports)
    final        agent code (or eval.command) in `autoresearch final` (sees test windows)
    host         trusted host code: the runner, the scorer, the hooks, the CLI
    human        the researcher

Where (each Flow's `base`):
    project      the project folder (`where` relative to it)
    run          one run's folder, <project>/runs/NNNN/ (`where` relative to it)
    state        the per-project state folder OUTSIDE the project (state_dir): stage scratch, the
                 metric channel, the human-only logs; keyed by the project's real path, never by
                 anything the agent writes, and never a path the guard lets the agent read
    data         the prepared data folder (AUTORESEARCH_DATA, else the cache's data/<dataset>)
    cache        ~/.cache/autoresearch (downloads and prepared data)
    config       ~/.config/autoresearch (the signing keys)
    sandbox      inside one stage's sandbox only (HOME, TMPDIR): gone when the stage ends
    user         the user's own files outside the project (HOME, sandbox.home/cache as declared)

What a place may hold (`holds`) is computed, not declared: everything its writers saw (SEES).
The invariant (checked by tests/test_flows.py): nobody reads a place that holds what they may
not see -- validation or test text never reaches the agent or TRAIN.
"""
from __future__ import annotations

import os

# ---------------------------------------------------------------- who

AGENT_READ = "agent:read"
AGENT_EDIT = "agent:edit"
TRAIN = "train"
SERVER = "server"
EVAL_COMMAND = "eval.command"
FINAL = "final"
HOST = "host"
HUMAN = "human"
ACTORS = (AGENT_READ, AGENT_EDIT, TRAIN, SERVER, EVAL_COMMAND, FINAL, HOST, HUMAN)
STAGES = (TRAIN, SERVER, EVAL_COMMAND, FINAL)          # sandboxed agent code: each gets mounts from this table

# What each actor sees (information, not places): what it writes may hold exactly that.
#   train: the train split; val / test: the held-out splits' text; secret: credentials and the signing key;
#   agent: whatever agent code chose to write (it saw only what its stage saw)
SEES = {
    AGENT_READ: frozenset({"train", "agent"}),
    AGENT_EDIT: frozenset({"train", "agent"}),
    TRAIN: frozenset({"train", "agent"}),
    SERVER: frozenset({"train", "agent", "val"}),       # the checkpoint TRAIN made, and the windows it is sent
    EVAL_COMMAND: frozenset({"train", "agent", "val"}),
    FINAL: frozenset({"train", "agent", "test"}),
    HOST: frozenset({"train", "agent", "val", "test", "secret"}),
    HUMAN: frozenset({"train", "agent", "val", "test", "secret"}),
}
# What each actor may be shown. Only trusted code and the human see it all.
MAY_SEE = {
    AGENT_READ: frozenset({"train", "agent"}),
    AGENT_EDIT: frozenset({"train", "agent"}),
    TRAIN: frozenset({"train", "agent"}),
    SERVER: frozenset({"train", "agent", "val"}),
    EVAL_COMMAND: frozenset({"train", "agent", "val"}),
    FINAL: frozenset({"train", "agent", "test"}),
    HOST: SEES[HOST],
    HUMAN: SEES[HUMAN],
}

BASES = ("project", "run", "state", "data", "cache", "config", "sandbox", "user")


class Flow:
    """One place or channel: where it is, who writes it, who may read it, and why."""
    __slots__ = ("name", "base", "where", "writers", "readers", "why", "content", "private", "names")

    def __init__(self, name: str, base: str, where: str, writers: tuple[str, ...], readers: tuple[str, ...],
                 why: str, content: tuple[str, ...] = (), private: bool = False, names: tuple[str, ...] = ()) -> None:
        if base not in BASES:
            raise ValueError(f"flow {name}: unknown base {base!r}")
        for a in writers + readers:
            if a not in ACTORS:
                raise ValueError(f"flow {name}: unknown actor {a!r}")
        self.name, self.base, self.where, self.writers, self.readers, self.why = \
            name, base, where, writers, readers, why
        self.content = frozenset(content)   # what it holds by nature (a data split, a key)
        self.private = private              # one per sandbox: each stage reads only its own (and the host)
        self.names = names                  # project-relative entries it is (a stage not among readers gets them hidden)

    @property
    def holds(self) -> frozenset:
        """What the place may hold: its content, and everything its untrusted writers saw (what
        host code writes is its own summary -- a signed record -- never held-out text)."""
        out: set = set(self.content)
        for w in self.writers:
            out |= SEES[w] if w not in (HOST, HUMAN) else frozenset()
        return frozenset(out)

    def path(self) -> str:
        return self.where if self.where.startswith("/") else f"<{self.base}>/{self.where}"

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, {self.path()!r})"


# ---------------------------------------------------------------- the table

_A, _E = AGENT_READ, AGENT_EDIT
_STAGES_R = (TRAIN, SERVER, EVAL_COMMAND, FINAL)

FLOWS = (
    # the project folder
    Flow("editable set", "project", "train.py, scratchpad.md (program.md's editable set)", (AGENT_EDIT,),
         (_A, _E, *_STAGES_R, HOST, HUMAN),
         "the agent's code; each stage runs the run's snapshot of it, never the work tree"),
    Flow("harness files", "project", "program.md, prepare.py, run.sh, hooks/, .claude/, container/", (HUMAN,),
         (_A, *_STAGES_R, HOST, HUMAN), "the human's steering and the trusted harness; nobody else writes them"),
    Flow("other project files", "project", "tracked and untracked files besides the above (.venv, assets)",
         (HUMAN,), (_A, *_STAGES_R, HOST, HUMAN), "shown read-only to every stage (its work copy links them)"),
    Flow("ledger", "project", "results.tsv", (HOST,), (_A, TRAIN, EVAL_COMMAND, FINAL, HOST, HUMAN),
         "trusted code appends one row per experiment; hidden from the model servers (it would tell "
         "final from EVAL)", names=("results.tsv",)),
    Flow("git", "project", ".git/", (HOST, HUMAN), (TRAIN, EVAL_COMMAND, FINAL, HOST, HUMAN),
         "the run branch: keep commits (the agent reads it through git log/show/diff, not files); hidden "
         "from the model servers", names=(".git",)),
    Flow("loop state", "project", ".autoresearch/ (state.json, run-counter, locks, guard-policy.json, pending/)",
         (HOST,), (_A, HOST, HUMAN), "trusted state; hidden from every stage (an empty folder over it)",
         names=(".autoresearch",)),
    Flow("final records", "project", ".autoresearch/final.json", (HOST,), (HOST, HUMAN),
         "test-split scores, once per kept result: for the human only", content=("test",)),
    # one run's folder: what the agent may read there is this list, judged by name
    Flow("run record", "run", "metrics.json", (HOST,), (_A, HOST, HUMAN),
         "signed by the runner; the agent's result"),
    Flow("train log", "run", "train.log", (HOST, TRAIN), (_A, HOST, HUMAN),
         "what TRAIN printed (it saw only the train split), then the evaluator's own lines"),
    Flow("script copy", "run", "<train script's name> (train.py)", (HOST,),
         (_A, TRAIN, SERVER, EVAL_COMMAND, FINAL, HOST, HUMAN), "the exact bytes that ran (hashed)"),
    Flow("diff", "run", "diff.patch", (HOST,), (_A, HOST, HUMAN), "the editable set against the branch head"),
    Flow("decision", "run", "decision.json", (HOST,), (_A, HOST, HUMAN), "the Stop hook's keep/discard record"),
    Flow("queue entry", "run", "queue.json", (HOST,), (_A, HOST, HUMAN), "a wave's queued run"),
    Flow("snapshot", "run", "snapshot/", (HOST,), (_A, HOST, HUMAN), "a queued run's editable set"),
    Flow("checkpoint", "run", "out/", (TRAIN,), (TRAIN, SERVER, EVAL_COMMAND, FINAL, HOST, HUMAN),
         "TRAIN's only writable folder that outlives it (its own run's: a later TRAIN never sees it); "
         "read-only to the evaluation stages, never the agent"),
    Flow("live marker", "run", ".running", (HOST,), (HOST,), "an flock held while the run goes"),
    # the per-project state folder outside the project
    Flow("stage scratch", "state", "runs/NNNN/<stage>/ (work copies: train, eval-0, eval-1, eval-cmd)",
         (*_STAGES_R, HOST), (*_STAGES_R, HOST), "each stage's writable copy of the snapshot; removed when the stage ends; "
         "outside the project, so nothing agent code writes there reaches the agent or a later stage", private=True),
    Flow("stage stand-ins", "state", "runs/NNNN/{code,frozen,empty,runs,go}/", (HOST,), (*_STAGES_R, HOST),
         "the snapshot's files, eval.files as committed, empty folders over hidden parts, a cold TRAIN's GO "
         "(go.json: the run's seed)"),
    Flow("warm TRAIN", "state", "warm/NNNN/ (script, out/, go/, train.log, state.json, result.json)", (TRAIN, HOST),
         (TRAIN, HOST), "the next run's TRAIN sandbox, warmed while the agent thinks (run/warm.py): the script's "
         "copy and out/ staged until runs/NNNN exists, go.json (the seed) read-only; moved into runs/NNNN or "
         "removed", private=True),
    Flow("metric channel", "state", "runs/NNNN/metric/metric.json", (EVAL_COMMAND, FINAL), (EVAL_COMMAND, FINAL, HOST),
         "eval.command's {\"value\": n}, made fresh for each; read by the host, signed by the runner",
         private=True),
    Flow("eval log", "state", "logs/NNNN/eval.log", (SERVER, EVAL_COMMAND), (HOST, HUMAN),
         "what the model servers or eval.command printed while they saw validation windows: human only"),
    Flow("final log", "state", "logs/NNNN/final.log", (FINAL,), (HOST, HUMAN),
         "what the model printed while it saw test windows: human only"),
    # data
    Flow("train split", "data", "train/", (HOST,), (TRAIN, HOST, HUMAN), "the only split TRAIN sees",
         content=("train",)),
    Flow("validation split", "data", "val/", (HOST,), (HOST, HUMAN, EVAL_COMMAND),
         "held by the trusted scorer (model servers get windows over the protocol); eval.command when declared",
         content=("val",)),
    Flow("test split", "data", "test/", (HOST,), (HOST, HUMAN, FINAL),
         "held by the trusted scorer in `autoresearch final` (eval.command when declared for final)",
         content=("test",)),
    Flow("downloads", "cache", "downloads/", (HOST,), (HOST, HUMAN), "the raw corpus, hash-checked",
         content=("train", "val", "test")),
    Flow("signing key", "config", "keys/<project id>/<key id>.key", (HOST,), (HOST,),
         "signs every run record; the project id lives in .git/config, each record names its key id",
         content=("secret",)),
    # inside one sandbox
    Flow("sandbox HOME and TMPDIR", "sandbox", "/tmp (HOME=/tmp, TMPDIR=/tmp)", _STAGES_R, _STAGES_R,
         "a private tmpfs per sandbox, gone with it", private=True),
    Flow("scorer session", "sandbox", "a model server's stdin and stdout (docker: FIFOs at /run/autoresearch-session)",
         (SERVER, HOST), (SERVER, HOST), "windows to the server, logits back; one per server, mounted into it alone "
         "(sandbox/fifos.py)", content=("val",), private=True),
    Flow("declared home", "user", "sandbox.home (program.md)", (TRAIN, HUMAN), (TRAIN, SERVER, FINAL, HUMAN),
         "writable in TRAIN only with home_writable; then EVAL gets a fresh one"),
    Flow("declared cache", "user", "sandbox.cache (program.md)", (TRAIN, HUMAN), (TRAIN, SERVER, FINAL, HUMAN),
         "TRAIN's writable cache; read-only in EVAL and final only with cache_eval"),
)

BY_NAME = {f.name: f for f in FLOWS}

# ---------------------------------------------------------------- what the guard consumes

# The entries of runs/NNNN/ the agent may read, decided on the name alone (besides the train
# script's copy, runs/NNNN/<basename of run.train_script>): anything else there -- out/, a file
# planted later, a link -- is not the agent's to read.
RUN_AGENT_FILES = frozenset(f.where for f in FLOWS
                            if f.base == "run" and AGENT_READ in f.readers and "/" not in f.where
                            and not f.where.startswith("<"))
RUN_AGENT_DIRS = frozenset(f.where.rstrip("/") for f in FLOWS
                           if f.base == "run" and AGENT_READ in f.readers and f.where.endswith("/"))
RUN_SCRIPT_COPY = BY_NAME["script copy"]
# Project files the agent may not read, by name (a concrete path in the table whose readers leave the
# agent out; .git/ aside: the agent reads the branch through git's own commands).
AGENT_HIDDEN_PROJECT = frozenset(f.where.rstrip("/") for f in FLOWS
                                 if f.base == "project" and AGENT_READ not in f.readers
                                 and " " not in f.where and f.where != ".git/")


def run_entry_readable(name: str, script_name: str = "train.py") -> bool:
    """May the agent read runs/NNNN/<name> (a first-level entry; a folder's files follow it)?
    Decided on the name only, case-sensitively: no link or later file changes the answer."""
    return name in RUN_AGENT_FILES or name in RUN_AGENT_DIRS or name == script_name


def hidden_from(stage: str) -> tuple[str, ...]:
    """The project entries a stage must not see (each mounted over with an empty stand-in).
    `final` is shown what the EVAL stage it mirrors is shown: pass SERVER or EVAL_COMMAND."""
    return tuple(n for f in FLOWS if f.base == "project" and stage not in f.readers for n in f.names)


def readable_by(actor: str) -> tuple[Flow, ...]:
    return tuple(f for f in FLOWS if actor in f.readers)


def writable_by(actor: str) -> tuple[Flow, ...]:
    return tuple(f for f in FLOWS if actor in f.writers)


# ---------------------------------------------------------------- the state folder

STATE_ENV = "AUTORESEARCH_STATE"


def state_home(env=None) -> str:
    """Where per-project state folders live: $AUTORESEARCH_STATE, else $XDG_STATE_HOME/autoresearch,
    else ~/.local/state/autoresearch -- outside every project."""
    env = os.environ if env is None else env
    if env.get(STATE_ENV):
        return os.path.abspath(env[STATE_ENV])
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(base), "autoresearch")


def state_dir(sid: str, env=None) -> str:
    """One project's state folder (stage scratch, the metric channel, human-only logs), keyed by
    `sid` (layout.state_id: the project's real path, hashed: nothing the agent can write)."""
    if not sid or not all(c in "0123456789abcdef" for c in sid):
        raise ValueError(f"not a state id: {sid!r}")
    return os.path.join(state_home(env), "projects", sid)
