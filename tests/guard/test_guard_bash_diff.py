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

from autoresearch.guard.cmdlang import FIND_FLAGS, FIND_VALUED, OPTION_FORMS, TEMPLATES, Denied, _expand, lex, match

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
         "a.b.c", "--queue", "--wait", "git", "ls", "cat", "./run.sh", "-", "9999999", "./x", "-la",
         # revisions: ~ and ^ inside a word mean nothing to bash (never first, never after : or =)
         "HEAD~1", "HEAD^", "HEAD^2", "HEAD~2^", "main..HEAD", "HEAD~3...HEAD", "HEAD~1:train.py", "a~b", "x:~y",
         "a=~", "a=~/x", "X=a:~/b", "~x", "^x", "--x=~", "src", "src/pkg", "-rn", "-A3", "-e", "--include=x"]
NASTY = ["'", '"', "\\", "\\\\", "$", "$x", "${x}", "$(id)", "`id`", ";", "|", "&", "&&", "||", ">", ">>", "<",
         "2>&1", "*", "?", "[a]", "{a,b}", "~", "~/x", "#", "!", "!!", "(", ")", "\n", "\t", "  ", "\r", "\x00",
         "\x01", "\x1b", "\x7f", "=", "\\\n", "'\\''", '"\\""', "\\ ", "$'x'", '$"x"', "\u00a0", "\u200b",
         "\u202e", "\u2028", "\ufeff", "ｌｓ", "а", "；", "＂", "“", "”", "‘", "’", "\u0301", "\uff07", "\u02bc",
         "%", "@", "^", "''", '""', " '", "' ", ' "', '" ', "~", "=~", ":~", "^^"]
TEXT = (list("abcdefghij XYZ 0123456789 .,:;-_/=+ ") * 3
        + ["'", '"', "$", "`", "\\", "!", "*", "?", "~", "{", "}", "(", ")", "#", "<", ">", "|", "&", "\n",
           "\t", "\x01", "é", "—", "\u00a0", "\u200b", "“", "ｌ", "а", "\u0301", "%", "@", "^", "[", "]",
           "$(id)", "\\'", "'\\''", "中", "🙂"])
FORMS = [seq for t in TEMPLATES for seq in _expand(t)]
PROGRAMS = {seq[0] for seq in FORMS} | {f.prog[0] for f in OPTION_FORMS}
BUILTINS = {"pwd"}                              # bash runs these itself: checked by their output
PATHS = ["train.py", "src", "src/pkg", "runs/0001/metrics.json", ".", "a/b/c", "README.md", "x:y", "1,2", "X=1",
         "a=~", "./x", "/etc/passwd", "..", "+5"]
REVS = ["HEAD", "HEAD~1", "HEAD^", "HEAD^2", "HEAD~2^", "main..HEAD", "HEAD~3...HEAD", "HEAD~1:train.py",
        "HEAD^:src/pkg/x.py", "abc1234", "main", "a~b", "x:~y", "HEAD:a=~", "a=~"]
GLOBS = ["'*.py'", '"*.py"', "'*'", '"src/*"', "x.py", "'[ab]*'", '"a b"', "'$x'", '"~"', "'?'"]


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


def _value(rng: random.Random, kind: str) -> str:
    if kind in ("GLOB",):
        return rng.choice(GLOBS)
    if kind in ("TEXT", "PATTERN"):
        return _quoted(rng) if rng.random() < 0.6 else rng.choice(PLAIN)
    if kind == "FTYPE":
        return rng.choice("fdl")
    if kind == "TYPE":
        return rng.choice(("py", "md"))
    if kind == "PATH" and rng.random() < 0.85:
        return rng.choice(PATHS)
    if kind == "N" and rng.random() < 0.85:
        return rng.choice(("5", "0", "10", "123456"))
    return _slot(rng, kind)


def option_form(rng: random.Random) -> list[str]:
    """A read-only tool with its options in any order: flags alone or clustered, values attached,
    as the next word or after `=` (a quoted glob glued to `--include=`), `--`, revisions."""
    form = rng.choice(OPTION_FORMS)
    words = list(form.prog)
    if form.operands == "find":
        words += [rng.choice(PLAIN) for _ in range(rng.randint(0, 2))]
        for _ in range(rng.randint(0, 4)):
            if rng.random() < 0.3:
                words.append(rng.choice(sorted(FIND_FLAGS)))
            else:
                name = rng.choice(sorted(FIND_VALUED))
                words += [name, _value(rng, FIND_VALUED[name])]
        return words
    opts: list[str] = []
    for _ in range(rng.randint(0, 4)):
        r = rng.random()
        if r < 0.3 and form.flags:
            opts.append("-" + "".join(rng.choice(form.flags) for _ in range(rng.randint(1, 3)) if form.cluster or _ == 0))
        elif r < 0.55 and form.valued:
            c = rng.choice(sorted(form.valued))
            v = _value(rng, form.valued[c])
            opts += [f"-{c}{v}"] if rng.random() < 0.3 and not v.startswith(("'", '"')) else [f"-{c}", v]
        elif r < 0.75 and form.long_valued:
            name = rng.choice(sorted(form.long_valued))
            v = _value(rng, form.long_valued[name])
            opts += [f"{name}={v}"] if rng.random() < 0.6 else [name, v]
        elif r < 0.9 and form.longs:
            opts.append(rng.choice(sorted(form.longs)))
        elif form.num:
            opts.append(f"-{rng.choice(('5', '10', '50', '1234567'))}")
    if form.num and form.cluster and rng.random() < 0.3:
        opts.insert(0, f"-{rng.choice(('5', '50'))}")     # head -50: the first word only
    ops = []
    if form.operands == "search":
        ops.append(_value(rng, "PATTERN"))
    if form.operands == "git-grep":             # options, the pattern, then paths (after -- or not)
        ops += [_value(rng, "PATTERN")] + (["--"] if rng.random() < 0.5 else [])
        ops += [_value(rng, "PATH") for _ in range(rng.randint(0, 2))]
        mixed = opts + ops
        if rng.random() < 0.2:
            rng.shuffle(mixed)
        return words + mixed
    if form.operands in ("revs-paths", "show"):
        ops += [rng.choice(REVS) if rng.random() < 0.85 else rng.choice(PLAIN) for _ in range(rng.randint(0, 2))]
        mixed = opts + ops
        if rng.random() < 0.5:
            rng.shuffle(mixed)
        if rng.random() < 0.3:
            mixed += ["--", _value(rng, "PATH")]
        return words + mixed
    ops += [_value(rng, "PATH") for _ in range(rng.randint(0 if form.operands != "paths+" else 1, 2))]
    mixed = opts + ops
    if rng.random() < 0.5:
        rng.shuffle(mixed)
    return words + mixed


def generate(rng: random.Random) -> str:
    """One command: a form's words with slots filled, then 0-3 mutations; or pure noise."""
    if rng.random() < 0.08:
        return "".join(rng.choice((*PLAIN, *NASTY, " ", _quoted(rng))) for _ in range(rng.randint(1, 6)))
    if rng.random() < 0.6:
        words = option_form(rng)
    else:
        words = [w if w not in ("TEXT", "PATH", "N", "REV") else _slot(rng, w) for w in rng.choice(FORMS)]
    for _ in range(rng.choice((0, 0, 0, 0, 0, 0, 1, 1, 2, 3))):
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
    for name in PROGRAMS - BUILTINS:
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
    return [r for res in results for r in res], str(stubs), str(work)


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
    results, stubs, work = run_all(tmp_path, jobs)
    assert len(results) == len(jobs)
    mismatches = []
    for (kind, cmd, words), (pid, rc, out, err, want_pid) in zip(expect, results):
        fields = out.split("\0")
        if kind == "template" and words[0] in BUILTINS:
            assert words == ["pwd"], words
            fields, want = out, work + "\n"
        elif kind == "template":
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
