"""program.md -> the policy the guard enforces in the current phase: the editable set and web access.

The editable set is program.md's patterns (files, folders, globs), matched by the one regex
program.editable_regex builds -- the same matcher that decides which files form a run's snapshot --
cached as text so the hot path needs only `re` (json imports it anyway).

Compiling it needs the real schema (pydantic + YAML, ~150 ms), far too slow for a hook that runs on
every tool call, so the result is cached in .autoresearch/guard-policy.json, keyed on program.md's
sha256: the hot path reads program.md, hashes it and reads the cache, with os and json only. A
stale, corrupt or malformed cache is rebuilt; an invalid program.md raises PolicyError, and the
guard then denies every call (the message names the problem).
"""
from __future__ import annotations

import json
import os
import re

POLICY_VERSION = 4
CACHE = ".autoresearch/guard-policy.json"
PROGRAM = "program.md"


class PolicyError(Exception):
    """program.md (or the policy compiled from it) cannot be used; the message names the problem."""


class Policy:
    __slots__ = ("phase", "editable", "web", "frozen", "script", "agent_written", "_match")

    def __init__(self, phase: str, editable: list[str], web: bool, editable_re: str = "(?!)",
                 frozen: list[str] | None = None, script: str = "train.py",
                 agent_written: list[str] | None = None):
        self.phase, self.editable, self.web = phase, editable, web
        self.frozen = {f.lower() for f in frozen or ()}     # eval.files: the human's eval script
        self.script = script                                # the script copy's name in runs/NNNN/
        self.agent_written = list(agent_written or ())      # host folders TRAIN writes (sandbox.home, .cache)
        self._match = re.compile(editable_re).fullmatch

    def matches(self, rel: str) -> bool:
        """Does a project-relative path match the editable patterns? (The harness's own files are
        refused separately, in paths.py, whatever this says.)"""
        return self._match(rel) is not None


def _digest(data: bytes) -> str:
    try:                                    # the bare C module: hashlib would load OpenSSL (~2 ms)
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return sha256(data).hexdigest()


def load_policy(root: str) -> Policy:
    """The current phase's policy, from the cache when program.md is unchanged, else compiled."""
    try:
        with open(os.path.join(root, PROGRAM), "rb") as f:
            text = f.read()
    except OSError as e:
        raise PolicyError(f"{PROGRAM}: cannot read it ({e.strerror or e}): fix program.md") from None
    digest = _digest(text)
    cache = os.path.join(root, CACHE)
    try:
        with open(cache, "rb") as f:
            data = json.loads(f.read())
        if data.get("version") == POLICY_VERSION and data.get("program_sha256") == digest:
            return _policy(data)
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        pass                                # missing, unreadable or stale: rebuild
    data = compile_policy(text)
    data["program_sha256"] = digest
    try:
        from ..atomic import write_atomic
        write_atomic(cache, json.dumps(data, indent=1))
    except OSError:
        pass                                # a read-only tree costs speed, not correctness
    return _policy(data)


def compile_policy(text: bytes) -> dict:
    """Validate program.md with the real schema; raises PolicyError naming the problem."""
    from ..editable import editable_regex
    from ..program import ConfigError, parse_program
    try:
        program = parse_program(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PolicyError(f"{PROGRAM}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ConfigError as e:
        raise PolicyError(str(e)) from None
    patterns = program.editable_patterns()
    sb = program.sandbox
    written = [p for p, w in ((sb.home, sb.home_writable), (sb.cache, True)) if p and w]
    written = sorted({q for p in written for q in (os.path.abspath(os.path.expanduser(p)),
                                                   os.path.realpath(os.path.expanduser(p)))})
    return {"version": POLICY_VERSION, "phase": program.phase, "editable": patterns,
            "editable_re": editable_regex(patterns), "web": program.current.web, "frozen": program.frozen_files(),
            "script": os.path.basename(program.run.train_script), "agent_written": written}


def _policy(data: dict) -> Policy:
    phase, editable, web, rx = data["phase"], data["editable"], data["web"], data["editable_re"]
    frozen, script, written = data["frozen"], data["script"], data["agent_written"]
    if not (isinstance(phase, str) and isinstance(web, bool) and isinstance(editable, list) and isinstance(rx, str)
            and isinstance(frozen, list) and all(isinstance(f, str) for f in frozen)
            and isinstance(script, str) and script and "/" not in script
            and isinstance(written, list) and all(isinstance(w, str) and w.startswith("/") for w in written)
            and all(isinstance(e, str) and e and not e.startswith("/") and ".." not in e.split("/")
                    for e in editable)):
        raise TypeError("malformed policy")
    try:
        return Policy(phase, editable, web, rx, frozen, script, written)
    except re.error:
        raise TypeError("malformed policy") from None
