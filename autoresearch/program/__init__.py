"""program.md front matter: the human's steering, validated.

Errors name the field and the line of program.md, so a typo at 2 a.m. is a
one-line fix, and a broken program.md stops the loop instead of guessing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from ..editable import editable_regex, frozen_problem, is_literal, match_files, never_editable, pattern_problem
from ..hostenv import HostMount, host_path_errors
from ..registry import SCRIPT_MODE, evaluator
from .sections import (BUILTIN_METRIC, RUN_OVERHEAD_S, Budget, Eval, Executor, Metric, Noise, Notify, Phase, Run, Sandbox,
                       _Strict)

PROGRAM_FILE = "program.md"


class ConfigError(ValueError):
    """program.md is missing, unreadable or invalid; the message names the field and line."""


__all__ = ["BUILTIN_METRIC", "PROGRAM_FILE", "RUN_OVERHEAD_S", "Budget", "ConfigError", "Eval", "Executor", "Metric", "Noise", "Notify",
           "Phase", "Program", "Run", "Sandbox", "load_program", "parse_program", "project_root", "split_front_matter"]


class Program(_Strict):
    objective: str = ""                          # one line: what the research is for (the agent reads it)
    metric: Metric = Metric()                    # what is measured, and which way is better
    budget: Budget = Budget()                    # the seconds of ONE run (not how many runs)
    editable: list[str] = ["train.py", "scratchpad.md"]   # the files, folders/ or globs the agent may edit
    min_improvement: float = Field(0.0, ge=0)    # a keep must beat the best by more than this (and the noise)
    noise: Noise = Noise()                       # how run-to-run noise sets the keep threshold
    sandbox: Sandbox = Sandbox()                 # where and within which limits a run executes
    run: Run = Run()                             # how a run trains and is measured
    deadline_hours: float | None = Field(None, gt=0)   # the loop stops this long after it started
    seed: int = 0                                # base seed; the harness derives each run's seed from it
    phase: str = "default"                       # the current phase (the Stop hook moves it on)
    phases: list[Phase] = [Phase(name="default")]   # the plan: each phase's focus and experiment count
    on_phase_end: Literal["next", "stop"] = "next"   # a spent phase moves on to the next one, or stops
    keep_checkpoints: Literal["kept", "all"] = "kept"  # "kept": a discarded or crashed run's out/ is deleted
    notify: Notify | None = None                 # `autoresearch overnight`'s end-of-night message
    mounts: list[HostMount] = []                 # host folders outside the project, read-only, per stage
    eval: Eval | None = None                     # run.mode eval_command: the human's frozen eval script
    executor: Executor = Executor()              # who runs a wave of queued runs (local slots or ray)
    body: str = ""                               # the prose below the front matter

    @model_validator(mode="after")
    def _phase_exists(self) -> "Program":
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: duplicate phase names in {names}")
        if self.phase not in names:
            raise ValueError(f"phase: {self.phase!r} is not one of the phases {names}")
        for f in self.all_patterns():
            if why := pattern_problem(f) or frozen_problem(f, self.frozen_files()):
                raise ValueError(f"editable: {why}")
        ev = evaluator(self.run.mode)
        if self.eval is not None and not ev.script:
            raise ValueError("eval: eval.command is set: write run.mode: eval_command (inline is the last resort)")
        if self.eval is None and ev.script:
            raise ValueError("run.mode: eval_command needs eval: {command: [python, eval.py], files: [eval.py]}")
        if ev.metric and (self.metric.name, self.metric.direction) != ev.metric:
            name, direction = ev.metric                  # the evaluator's own, in registry.EVALUATORS
            better = "lower" if direction == "minimize" else "higher"
            raise ValueError(f"metric: the built-in evaluation (run.mode {self.run.mode}) measures {name}, {better} "
                             f"is better: write metric: {{name: {name}, direction: {direction}}} (to score "
                             f"something else, use run.mode: {SCRIPT_MODE} with your own eval script)")
        code = [self.run.train_script, *self.frozen_files()]
        for out in self.run.outputs:
            clash = [f for f in code if f == out or f.startswith(out + "/") or out.startswith(f + "/")]
            if clash or self.editable_matches(out):
                raise ValueError(f"run.outputs {out!r} would replace code ({', '.join(clash) or 'an editable file'}) "
                                 "with an empty folder: name the folder the code writes its results into")
        return self

    def frozen_files(self) -> list[str]:
        """The eval script's files: never editable, run as committed at the base commit."""
        return list(self.eval.files) if self.eval is not None else []

    def all_patterns(self) -> list[str]:
        """Every editable pattern, program-wide and of every phase."""
        return list(dict.fromkeys(self.editable + [f for p in self.phases for f in p.editable]))

    @property
    def current(self) -> Phase:
        return next(p for p in self.phases if p.name == self.phase)

    def editable_patterns(self) -> list[str]:
        """The editable patterns in the current phase (program-wide plus the phase's extras)."""
        return list(dict.fromkeys(self.editable + self.current.editable))

    def editable_matches(self, path: str) -> bool:
        """May the agent edit this project-relative path in the current phase? (The guard's rule.)"""
        rel = path.removeprefix("./")
        return not never_editable(rel, self.frozen_files()) and re.fullmatch(editable_regex(self.editable_patterns()), rel) is not None

    def editable_files(self, root: Path) -> list[str]:
        """The editable set in the current phase: the files below root the patterns match, sorted."""
        return sorted({f for fs in match_files(Path(root), self.editable_patterns(), self.frozen_files()).values() for f in fs})

    def check_editable(self, root: Path) -> None:
        """A folder or glob (in any phase) that matches no file is a typo: say which. A literal
        file may be missing (a run records it as absent until it exists)."""
        empty = [p for p, fs in match_files(Path(root), self.all_patterns(), self.frozen_files()).items() if not fs and not is_literal(p)]
        if empty:
            raise ConfigError(f"{PROGRAM_FILE}: editable: {', '.join(map(repr, empty))} "
                              f"match{'es' if len(empty) == 1 else ''} no file in {root}: fix the pattern "
                              "(a folder ends in '/': src/; a glob: config/*.py, **/*.yaml)")


def split_front_matter(text: str) -> tuple[str, str, int]:
    """Return (yaml, body, line offset of the yaml). A file without front matter is an error."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise ConfigError(f"{PROGRAM_FILE}: line 1: expected YAML front matter starting with '---'")
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1:]), 1
    raise ConfigError(f"{PROGRAM_FILE}: the front matter opened on line 1 is never closed with '---'")


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a 0-based line."""
    line = node.start_mark.line if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == key), None)
            if pair is None:
                return line
            key_node, node = pair
            # a nested block (`run:` then its fields below) is blamed on its key's line
            line = key_node.start_mark.line if isinstance(node, yaml.CollectionNode) else node.start_mark.line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line
        else:
            break
    return line


def parse_program(text: str) -> Program:
    """Parse and validate program.md's text."""
    front, body, offset = split_front_matter(text)
    try:
        data = yaml.safe_load(front) or {}
        node = yaml.compose(front)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1 + offset}: " if mark is not None else ""
        raise ConfigError(f"{PROGRAM_FILE}: {where}invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{PROGRAM_FILE}: the front matter must be a mapping of fields")
    try:
        return Program(**data, body=body)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if not loc and ": " in msg:           # model-level checks start with the field they blame
                head, msg = msg.split(": ", 1)
                loc = (head,)
            field = ".".join(str(p) for p in loc) or "front matter"
            line = _line_of(node, loc)
            where = f"line {line + 1 + offset}: " if line is not None else ""
            msgs.append(f"{PROGRAM_FILE}: {where}{field}: {msg}")
        raise ConfigError("\n".join(msgs)) from None


def load_program(root: Path) -> Program:
    path = root / PROGRAM_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{PROGRAM_FILE}: cannot read {path}: {e.strerror}") from None
    program = parse_program(text)
    folders = {"sandbox.home": program.sandbox.home, "sandbox.cache": program.sandbox.cache}
    if errs := host_path_errors(root, program.run.python, program.mounts, folders):
        raise ConfigError("\n".join(f"{PROGRAM_FILE}: {e}" for e in errs))
    program.check_editable(root)
    return program


def project_root(start: Path | None = None) -> Path:
    """The project: $CLAUDE_PROJECT_DIR, else the nearest folder upwards holding program.md."""
    env = os.environ.get("CLAUDE_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / PROGRAM_FILE).is_file():
            return d
    raise ConfigError(f"no {PROGRAM_FILE} found in {here} or any folder above it")
