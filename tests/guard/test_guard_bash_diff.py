"""Differential test of the Bash command language against real bash.

Every command the guard's language accepts -- the corpus's allowed cases and the accepted
share of >= 100,000 strings generated from a grammar of quotes, escapes, shell operators,
unicode lookalikes and control bytes -- runs as `bash -c <command>` with an otherwise empty
PATH holding only stub programs (one per program the templates name, plus ./run.sh in the
working folder). A stub prints its pid, the path it was run as and its arguments, and
nothing else runs. We assert that bash exec'd exactly the program and argv the guard decided
(`cmdlang.match`), in bash's own process, and started no other process.

"No other process" is proved by pid arithmetic, not by trust: each driver runs in a fresh
PID namespace where pids are handed out one by one, so bash pids of consecutive commands
must be consecutive (any fork, thread or helper would take a pid in between), and the stub's
pid must be bash's (bash exec'd it in place). Commands run one bash each (no batching in one
shell, so no state can carry over), from two drivers in parallel.

Strings the lexer accepts but no template fits are checked too: `printf '%s\\0' <command>`
(a builtin, so still no process) must print exactly the lexer's words. Denied strings need
no run: nothing of them reaches bash.

AUTORESEARCH_GUARD_DIFF_N (default 100000) and AUTORESEARCH_GUARD_DIFF_SEED set the size
and the seed.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from autoresearch.guard.cmdlang import TEMPLATES, Denied, _expand, lex, match

ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("AUTORESEARCH_GUARD_DIFF_N", "100000"))
SEED = int(os.environ.get("AUTORESEARCH_GUARD_DIFF_SEED", "11"))
CHUNK = 15000           # commands per PID namespace: well under pid_max (32768 on many kernels)
LOCALES = ("C.UTF-8", "C")

# ---------------------------------------------------------------------------
# The grammar

PLAIN = ["train.py", "runs/0001/metrics.json", "HEAD", "main", "a=b", "X=1", "x:y", "1,2", "+5", "-", "--",
         ".", "..", "/etc/passwd", "a/b/c", "-n", "--stat", "-l", "--oneline", "-m", "5", "0", "123456",
         "status", "diff", "log", "show", "HEAD:train.py", "--output=x", "-1", "README.md", "...", "_", "x+y",
         "a.b.c", "--queue", "--wait", "git", "ls", "cat", "./run.sh", "-", "9999999", "./x", "-la"]
NASTY = ["'", '"', "\\", "\\\\", "$", "$x", "${x}", "$(id)", "`id`", ";", "|", "&", "&&", "||", ">", ">>", "<",
         "2>&1", "*", "?", "[a]", "{a,b}", "~", "~/x", "#", "!", "!!", "(", ")", "\n", "\t", "  ", "\r", "\x00",
         "\x01", "\x1b", "\x7f", "=", "\\\n", "'\\''", '"\\""', "\\ ", "$'x'", '$"x"', "\u00a0", "\u200b",
         "\u202e", "\u2028", "\ufeff", "ｌｓ", "а", "；", "＂", "“", "”", "‘", "’", "\u0301", "\uff07", "\u02bc",
         "%", "@", "^", "''", '""', " '", "' ", ' "', '" ']
TEXT = (list("abcdefghij XYZ 0123456789 .,:;-_/=+ ") * 3
        + ["'", '"', "$", "`", "\\", "!", "*", "?", "~", "{", "}", "(", ")", "#", "<", ">", "|", "&", "\n",
           "\t", "\x01", "é", "—", "\u00a0", "\u200b", "“", "ｌ", "а", "\u0301", "%", "@", "^", "[", "]",
           "$(id)", "\\'", "'\\''", "中", "🙂"])
FORMS = [seq for t in TEMPLATES for seq in _expand(t)]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(TEXT) for _ in range(rng.choice((0, 1, 3, 6, 12, 30))))


def _quoted(rng: random.Random) -> str:
    text = _text(rng)
    if rng.random() < 0.5:
        if rng.random() < 0.85:
            text = text.replace("'", "")
        return f"'{text}'"
    if rng.random() < 0.85:
        for c in '"$`\\!':
            text = text.replace(c, "")
    return f'"{text}"'


def _slot(rng: random.Random, kind: str) -> str:
    if kind == "TEXT":
        return _quoted(rng) if rng.random() < 0.75 else rng.choice(PLAIN)
    if kind == "N":
        return rng.choice(("5", "0", "10", "123456", "007", rng.choice(PLAIN)))
    return rng.choice(PLAIN)


def generate(rng: random.Random) -> str:
    """One command: a template's words with slots filled, then 0-3 mutations; or pure noise."""
    if rng.random() < 0.08:
        return "".join(rng.choice((*PLAIN, *NASTY, " ", _quoted(rng))) for _ in range(rng.randint(1, 6)))
    words = [w if w not in ("TEXT", "PATH", "N", "REV") else _slot(rng, w) for w in rng.choice(FORMS)]
    for _ in range(rng.choice((0, 0, 0, 0, 0, 1, 1, 2, 3))):
        op, i = rng.random(), rng.randrange(len(words))
        w = words[i]
        if op < 0.35:                                   # a nasty piece inside or around a word
            j = rng.randint(0, len(w))
            words[i] = w[:j] + rng.choice(NASTY) + w[j:]
        elif op < 0.55:                                 # a quoted piece glued to a word
            words[i] = (w + _quoted(rng)) if rng.random() < 0.5 else (_quoted(rng) + w)
        elif op < 0.75:                                 # another word
            words.insert(i + 1, rng.choice((*PLAIN, _quoted(rng))))
        elif op < 0.9:
            words[i] = rng.choice(PLAIN)
        else:
            del words[i]
            if not words:
                words = [rng.choice(PLAIN)]
    sep = " " if rng.random() < 0.9 else rng.choice((" ", "  ", "\t", " \\\n", ";", "|"))
    return sep.join(words)


# ---------------------------------------------------------------------------
# Running bash

STUB = "#!/bin/sh\nprintf '%s\\0' \"$$\" \"$0\" \"$@\"\n"
DRIVER = r'''
import json, subprocess, sys
work, stubs, src, dst = sys.argv[1:]
out = []
for cmd, loc in json.load(open(src)):
    p = subprocess.Popen(["/bin/bash", "-c", cmd], cwd=work, env={"PATH": stubs, "LC_ALL": loc},
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    o, e = p.communicate()
    out.append([p.pid, p.returncode, o.decode("utf-8", "surrogateescape"), e.decode("utf-8", "replace")])
json.dump(out, open(dst, "w"))
'''


def _namespace() -> list[str]:
    """unshare's PID-namespace prefix: as root, or through a user namespace otherwise."""
    for prefix in (["unshare", "--pid", "--fork"], ["unshare", "--user", "--map-root-user", "--pid", "--fork"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    raise AssertionError("unshare cannot make a PID namespace here; the differential test needs one")


def run_all(tmp: Path, jobs: list[tuple[str, str]]) -> tuple[list[list], str]:
    work, stubs = tmp / "work", tmp / "stubs"
    work.mkdir()
    stubs.mkdir()
    for name in {seq[0] for seq in FORMS}:
        path = work / "run.sh" if name == "./run.sh" else stubs / name
        path.write_text(STUB)
        path.chmod(0o755)
    (tmp / "driver.py").write_text(DRIVER)
    prefix = _namespace()
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]

    def one(k: int) -> list[list]:
        src, dst = tmp / f"in{k}.json", tmp / f"out{k}.json"
        src.write_text(json.dumps(chunks[k]))
        subprocess.run([*prefix, sys.executable, "-I", str(tmp / "driver.py"), str(work), str(stubs),
                        str(src), str(dst)], check=True, timeout=1800)
        return json.loads(dst.read_text())

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        results = list(pool.map(one, range(len(chunks))))
    # consecutive pids within each namespace: the driver is 1, its first bash 2, ...
    for res in results:
        for i, r in enumerate(res):
            r.append(i + 2)
    return [r for res in results for r in res], str(stubs)


def corpus_allowed() -> list[str]:
    corpus = yaml.safe_load(Path(__file__).with_name("guard_corpus.yaml").read_text())
    fill = {"{root}": "/r/proj", "{home}": "/r/home", "{stdlib}": "/usr/lib/python3", "{site}": "/r/site",
            "{transcripts}": "/r/home/.claude/projects/x"}
    out = []
    for c in corpus["bash_allow"]:
        for k, v in fill.items():
            c = c.replace(k, v)
        out.append(c)
    return out


def test_bash_runs_exactly_what_the_guard_decided(tmp_path) -> None:
    assert shutil.which("bash") and Path("/bin/bash").exists()
    rng = random.Random(SEED)
    generated = [generate(rng) for _ in range(N)]
    corpus = corpus_allowed()
    jobs: list[tuple[str, str]] = []          # (command for bash, locale)
    expect: list[tuple[str, str, list[str]]] = []   # (kind, source command, words)
    denied = 0
    for k, cmd in enumerate(corpus + generated):
        try:
            m = match(cmd)
            jobs.append((cmd, LOCALES[k % 2]))
            expect.append(("template", cmd, m.argv))
        except Denied:
            if k < len(corpus):
                raise AssertionError(f"the corpus allows {cmd!r}, the language does not")
            try:
                words = [w.text for w in lex(cmd)]
            except Denied:
                denied += 1
                continue
            jobs.append(("printf '%s\\0' " + cmd, LOCALES[k % 2]))
            expect.append(("lexer", cmd, words))
    results, stubs = run_all(tmp_path, jobs)
    assert len(results) == len(jobs)
    mismatches = []
    for (kind, cmd, words), (pid, rc, out, err, want_pid) in zip(expect, results):
        fields = out.split("\0")
        if kind == "template":
            program = words[0] if words[0] == "./run.sh" else f"{stubs}/{words[0]}"
            want = [str(pid), program, *words[1:], ""]
        else:
            want = [*words, ""]
        if rc != 0 or err or fields != want or pid != want_pid:
            mismatches.append((cmd, kind, words, pid, want_pid, rc, out, err))
    accepted = sum(1 for e in expect if e[0] == "template")
    print(f"\ndifferential test (seed {SEED}): {len(corpus)} corpus + {N} generated commands; "
          f"{accepted} accepted and run under bash (exec'd argv + pid checked), "
          f"{len(expect) - accepted} more lexed but fitting no template (bash's split checked with printf), "
          f"{denied} denied by the lexer; mismatches: {len(mismatches)}")
    assert accepted >= 0.3 * N, f"only {accepted} of {N} generated commands were accepted: bias the grammar"
    assert not mismatches, "\n".join(repr(m) for m in mismatches[:10])
