"""The read-only tools an agent habitually types, with their options in any order.

Each is an OptForm: the options an agent uses, parsed as GNU getopt (or git) parses them --
short flags alone or clustered (`-rn`), a value attached or in the next word (`-A3`, `-A 3`,
`--include=GLOB`), `--` ending the options, long options only by their exact name (getopt would
take an abbreviation too, so one is refused) -- and any option not listed refused, so none that
executes, writes or follows links (`rg --pre`, `find -exec`, `git diff --output`) can pass.
The result is a cmdlang Match: path operands for the Read policy, folders a walk reaches for
search.reach_problem, and git object paths (REV:PATH) judged by name.
"""
from __future__ import annotations

from .lexer import REV_MARKS, Denied, Match, Word, _check

class OptForm:
    """A read-only program whose options come in any order.

    flags: short flags (clusterable when `cluster`); valued: short options taking a value, by
    slot kind; longs: long flags; long_valued: long options taking a value; num: `-N` (a count
    given as the option: `head -50`, `git log -5`; for head/tail only as the first word, as
    coreutils reads it); operands: how the words that are not options are read (see _operands);
    usage: the form shown to the agent; stop: options end at the first operand, as git grep reads them."""
    __slots__ = ("prog", "flags", "valued", "longs", "long_valued", "num", "cluster", "operands", "usage",
                 "examples", "stop")

    def __init__(self, prog, flags="", valued=None, longs=(), long_valued=None, num=False, cluster=True,
                 operands="paths+", usage="", examples=(), stop=False):
        self.prog, self.flags, self.valued = tuple(prog.split()), flags, dict(valued or {})
        self.longs, self.long_valued = frozenset(longs), dict(long_valued or {})
        self.num, self.cluster, self.operands, self.usage = num, cluster, operands, usage
        self.examples = examples
        self.stop = stop              # options end at the first operand (git's PARSE_OPT_STOP_AT_NON_OPTION)


_GREP_LONG = {"--line-number": "-n", "--ignore-case": "-i", "--recursive": "-r", "--dereference-recursive": "-R",
              "--files-with-matches": "-l", "--count": "-c", "--word-regexp": "-w", "--extended-regexp": "-E",
              "--fixed-strings": "-F", "--invert-match": "-v", "--with-filename": "-H", "--no-filename": "-h",
              "--only-matching": "-o", "--files-without-match": "-L", "--quiet": "-q", "--no-messages": "-s"}
_GIT_GREP_LONG = ("--line-number", "--ignore-case", "--word-regexp", "--files-with-matches", "--count",
                  "--invert-match", "--fixed-strings", "--extended-regexp", "--only-matching")
OPTION_FORMS = (
    OptForm("grep", "nirRlcwEFvHhoLqsx", {"A": "N", "B": "N", "C": "N", "m": "N", "e": "PATTERN"},
            set(_GREP_LONG), {"--include": "GLOB", "--exclude": "GLOB", "--exclude-dir": "GLOB",
                              "--regexp": "PATTERN", "--max-count": "N", "--context": "N"},
            operands="search", usage="grep [-rnilcwEFvH -A N -B N -C N --include=GLOB] PATTERN PATH...",
            examples=('grep -rn "def forward" src', "grep -n lr train.py", "grep -rn -e attention --include='*.py' src")),
    OptForm("rg", "niwlcvFHNSsox", {"A": "N", "B": "N", "C": "N", "m": "N", "e": "PATTERN", "g": "GLOB", "t": "TYPE"},
            {"--line-number", "--ignore-case", "--word-regexp", "--files-with-matches", "--count", "--invert-match",
             "--fixed-strings", "--with-filename", "--no-heading", "--smart-case", "--case-sensitive",
             "--only-matching", "--hidden", "--no-ignore", "--files"},
            {"--glob": "GLOB", "--type": "TYPE", "--regexp": "PATTERN", "--max-count": "N", "--context": "N"},
            operands="search", usage="rg [-niwlcvF -A N -B N -C N -g GLOB -t TYPE] PATTERN [PATH...]",
            examples=('rg -n "def forward" src', "rg -n -g '*.py' attention src")),
    OptForm("find", operands="find", usage="find PATH... [-maxdepth N] [-mindepth N] [-type f|d] "
            "[-name GLOB] [-iname GLOB] [-path GLOB] [-newer PATH] [-not] [-o] [-print]",
            examples=("find src -name '*.py'", "find src -maxdepth 2 -type d")),
    OptForm("ls", "alhRtrSd1F", longs={"--all"}, operands="paths*", usage="ls [-alhRtrSd1F] [PATH...]",
            examples=("ls -la", "ls -l runs/0001")),
    OptForm("cat", "n", operands="paths+", usage="cat [-n] PATH...", examples=("cat train.py",)),
    OptForm("head", "", {"n": "N", "c": "N"}, num=True, usage="head [-N | -n N] PATH...",
            examples=("head -50 train.py", "head -n 50 train.py")),
    OptForm("tail", "", {"n": "N", "c": "N"}, num=True, usage="tail [-N | -n N] PATH...",
            examples=("tail -20 runs/0001/train.log", "tail -n 20 runs/0001/train.log")),
    OptForm("wc", "lwcmL", usage="wc [-lwcmL] PATH...", examples=("wc -l train.py",)),
    OptForm("git log", "", {"n": "N"}, {"--oneline", "--stat", "--name-only", "--name-status", "--graph",
                                         "--decorate", "--all", "-p", "--patch", "--reverse", "--no-merges"},
            num=True, cluster=False, operands="revs-paths",
            usage="git log [-N | -n N] [--oneline] [--stat] [-p] [REV] [-- PATH...]",
            examples=("git log --oneline -10", "git log -n 5 --oneline", "git log --oneline -- train.py")),
    OptForm("git show", "", {}, {"--stat", "--oneline", "--name-only", "--name-status", "--no-patch"},
            cluster=False, operands="show", usage="git show [--stat] REV | git show REV:PATH",
            examples=("git show HEAD --stat", "git show HEAD~1:train.py")),
    OptForm("git diff", "", {}, {"--stat", "--name-only", "--name-status", "--cached", "--staged"},
            cluster=False, operands="revs-paths", usage="git diff [--stat] [REV [REV]] [-- PATH...]",
            examples=("git diff", "git diff HEAD~1", "git diff HEAD~1 -- train.py")),
    # the work tree's tracked files only: never --untracked/--no-index, a revision's tree, -f FILE, -O
    OptForm("git grep", "nilwcvFEIhHo", {"e": "PATTERN"}, set(_GIT_GREP_LONG), stop=True, operands="git-grep",
            usage="git grep [-nilwcvFE] [-e PATTERN | PATTERN] [-- PATH...]",
            examples=('git grep -n "def forward"', "git grep -n attention -- src", "git grep -il -e rope src")),
    OptForm("git ls-files", operands="git-ls", cluster=False, usage="git ls-files [PATH...]",
            examples=("git ls-files", "git ls-files src")),
)
_BY_PROG = {f.prog: f for f in OPTION_FORMS}
FIND_FLAGS = {"-print", "-not", "-o", "-a", "-or", "-and", "-empty"}
FIND_VALUED = {"-name": "GLOB", "-iname": "GLOB", "-path": "GLOB", "-ipath": "GLOB", "-type": "FTYPE",
               "-maxdepth": "N", "-mindepth": "N", "-newer": "PATH"}


def _rev_ok(text: str) -> bool:
    """A git revision as the agent types one: a name (`HEAD`, `main`, a hash, `origin/x`) with
    `~N`/`^N` suffixes, or a range of two (`A..B`, `A...B`). Never an option, never empty."""
    import re
    return re.fullmatch(r"(?:[A-Za-z0-9_][A-Za-z0-9._/+,-]*(?:[~^][0-9]*)*)"
                        r"(?:\.\.\.?(?:[A-Za-z0-9_][A-Za-z0-9._/+,-]*(?:[~^][0-9]*)*)?)?", text) is not None


class _Bad(Denied):
    """An option the form does not take (at word `index`: a suggestion drops it)."""

    def __init__(self, msg: str, index: int):
        super().__init__(msg)
        self.index = index


def _getopt(form: OptForm, words: list[Word], first: int):
    """GNU getopt's reading of words[first:]: options anywhere before `--` (permutation), short
    flags clustered, a value attached or in the next word, long options only by their exact name
    (getopt would also take an abbreviation, which is therefore refused). (options, operands,
    operand word indices, index of `--` or None)."""
    prog = " ".join(form.prog)
    opts: list[tuple[str, Word | None]] = []
    operands: list[int] = []
    dashdash = None
    i, n = first, len(words)
    while i < n:
        w = words[i]
        t = w.text
        if t == "--" and not w.quoted:
            dashdash = i
            operands += range(i + 1, n)
            break
        if t.startswith("--"):
            name, eq, val = t.partition("=")
            known = name in form.longs or name in form.long_valued
            if known and w.quoted and not (eq and w.raw.startswith(name + "=") and name in form.long_valued):
                raise _Bad(f"quotes are allowed only around the text of ./run.sh -m, a search pattern or a glob: "
                           f"write {t} without quotes", i)
            if name in form.longs and not eq:
                opts.append((name, None))
            elif name in form.long_valued:
                kind = form.long_valued[name]
                if eq:
                    vw = Word(val, w.quoted and len(val) < len(w.raw))
                else:
                    if w.quoted:
                        raise _Bad(f"quotes are allowed only around the text of ./run.sh -m, a search pattern "
                                   f"or a glob: write {t} without quotes", i)
                    i += 1
                    if i >= n:
                        raise Denied(f"{name} needs a value")
                    vw = words[i]
                _check(kind, vw, prog)
                opts.append((name, vw))
            else:
                raise _Bad(f"{t} is not an allowed option here: {prog} takes {form.usage}", i)
        elif t.startswith("-") and t != "-":
            if w.quoted:
                raise _Bad(f"quotes are allowed only around the text of ./run.sh -m, a search pattern or a glob: "
                           f"write {t} without quotes", i)
            if t in form.longs:                  # git's single-dash long flags (-p)
                opts.append((t, None))
            elif form.num and t[1:].isdigit() and t[1:].isascii() and (form.cluster is False or i == first):
                if len(t) > 7:
                    raise Denied(f"{t[1:]} is not a count (at most 6 digits)")
                opts.append(("-N", Word(t[1:])))
            else:
                j = 1
                while j < len(t):
                    c = t[j]
                    if c in form.flags and (form.cluster or len(t) == 2):
                        opts.append(("-" + c, None))
                        j += 1
                        continue
                    if c in form.valued and (form.cluster or j == 1):
                        rest = t[j + 1:]
                        if rest:
                            vw = Word(rest)
                        else:
                            i += 1
                            if i >= n:
                                raise Denied(f"-{c} needs a value")
                            vw = words[i]
                        _check(form.valued[c], vw, prog)
                        opts.append(("-" + c, vw))
                        break
                    raise _Bad(f"{t} is not an allowed option here: {prog} takes {form.usage}", i)
        else:
            operands.append(i)
            if form.stop:                        # git grep: everything after the first operand is one too
                dashdash = _rest_operands(form, words, i + 1, operands)
                break
        i += 1
    return opts, operands, dashdash


def _rest_operands(form: OptForm, words: list[Word], start: int, operands: list[int]) -> int | None:
    """After git grep's first operand: the rest are operands (appended), up to and after a `--`
    (its index returned); a word before it that starts with `-` is an option too late for git."""
    dashdash = None
    for k in range(start, len(words)):
        if words[k].text == "--" and not words[k].quoted and dashdash is None:
            dashdash = k
        elif dashdash is None and words[k].text.startswith("-"):
            raise Denied(f"{words[k].text}: {' '.join(form.prog)} takes its options before the pattern: {form.usage}")
        else:
            operands.append(k)
    return dashdash


def _match_optform(form: OptForm, words: list[Word]) -> Match:
    """The Match of an option form, or Denied naming the problem."""
    texts = [w.text for w in words]
    prog = " ".join(form.prog)
    first = len(form.prog)
    if form.operands == "find":
        return _match_find(form, words)
    opts, ops, dashdash = _getopt(form, words, first)
    names = {o for o, _ in opts}
    paths: list[str] = []
    walks: list = []
    gitnames: list[str] = []
    implicit = None
    if form.operands in ("paths+", "paths*"):
        for k in ops:
            _check("PATH", words[k], prog)
            paths.append(texts[k])
        if form.operands == "paths+" and not ops:
            raise Denied(f"{prog} needs a file: {form.usage} (it would wait for input that never comes)")
        if "-R" in names:                        # ls -R: a listing of everything below
            roots = ops or [None]
            walks = [(k, texts[k] if k is not None else ".", False, True, None) for k in roots]
            implicit = len(words) if not ops else None
    elif form.operands == "search":
        patterns = [v for o, v in opts if o in ("-e", "--regexp")]
        if not patterns and "--files" not in names:
            if not ops:
                raise Denied(f"{prog} needs a pattern: {form.usage}")
            k, ops = ops[0], ops[1:]
            _check("TEXT" if dashdash is None or k < dashdash else "PATTERN", words[k], prog)
        for k in ops:
            _check("PATH", words[k], prog)
            paths.append(texts[k])
        recursive = prog == "rg" or names & {"-r", "-R", "--recursive", "--dereference-recursive"}
        if not recursive and not ops:
            raise Denied(f"name the file to search: {prog} -n PATTERN FILE, or a folder: {prog} -rn PATTERN FOLDER")
        if recursive:
            follow = bool(names & {"-R", "--dereference-recursive"})
            roots = ops or [None]
            walks = [(k, texts[k] if k is not None else ".", follow, "--files" in names, None) for k in roots]
            implicit = len(words) if not ops else None
    elif form.operands in ("git-grep", "git-ls"):
        tracked = _git_pathspecs(form, words, opts, ops, dashdash)
        if form.operands == "git-grep":
            return Match(form.usage, texts, [p for p, _ in tracked], [], [], words, None, tracked)
        paths = [p for p, _ in tracked]
    elif form.operands in ("revs-paths", "show"):
        revs = ops if dashdash is None else [k for k in ops if k < dashdash]
        after = [] if dashdash is None else [k for k in ops if k > dashdash]
        if form.operands == "show":
            if after or dashdash is not None:
                raise Denied(f"git show takes no -- PATH: {form.usage}")
        elif prog == "git diff" and len(revs) > 2:
            raise Denied(f"git diff compares at most two revisions: {form.usage}")
        elif prog == "git log" and len(revs) > 1:
            raise Denied(f"git log takes one revision: {form.usage}")
        for k in revs:
            w = words[k]
            if w.quoted:
                _check("PATH", w, prog)
            rev, colon, obj = w.text.partition(":")
            if form.operands == "show" and colon:
                if rev and not _rev_ok(rev):
                    raise Denied(f"{w.text}: not a revision and path: git show REV:PATH (e.g. HEAD~1:train.py)")
                if not obj or obj.startswith("/") or ".." in obj.split("/") or any(c in REV_MARKS for c in obj):
                    raise Denied(f"{w.text}: give the path relative to the project: git show REV:PATH")
                gitnames.append(obj[2:] if obj.startswith("./") else obj)
            elif not _rev_ok(w.text):
                raise Denied(f"{w.text} is not a revision: {form.usage} (e.g. HEAD, HEAD~1, main, abc1234)")
            else:
                gitnames.append(w.text)          # git takes a word that is no revision as a path
        for k in after:
            _check("PATH", words[k], prog)
            paths.append(texts[k])
    return Match(form.usage, texts, paths, walks, gitnames, words, implicit)


def _git_pathspecs(form: OptForm, words: list[Word], opts, ops: list[int], dashdash) -> list[tuple[str, bool]]:
    """git grep's pattern (the first operand without -e) checked, and its pathspecs, or git
    ls-files' paths: [(path, given without `--`, so git would take a missing one for a revision)]. With
    a `--`, git grep takes every word before it for a revision, so none may stand there.
    No pathspec magic (`:(glob)`, `:!x`): a leading `:` is refused; SAFE has no wildcard."""
    prog = " ".join(form.prog)
    if form.operands == "git-grep" and not any(o in ("-e",) for o, _ in opts):
        if not ops or (dashdash is not None and ops[0] > dashdash):
            raise Denied(f"{prog} needs a pattern before any --: {form.usage}")
        _check("TEXT", words[ops[0]], prog)
        ops = ops[1:]
    if form.operands == "git-grep" and dashdash is not None and any(k < dashdash for k in ops):
        raise Denied(f"with --, git grep reads the words before it as revisions (it would search a commit's "
                     f"tree): put the paths after it: {form.usage}")
    out = []
    for k in ops:
        _check("PATH", words[k], prog)
        if words[k].text.startswith(":"):
            raise Denied(f"{words[k].text}: pathspec magic (a leading :) is not allowed: name the file or folder")
        out.append((words[k].text, dashdash is None or k < dashdash))
    return out


def _match_find(form: OptForm, words: list[Word]) -> Match:
    """find PATH... EXPR: the folders first (up to the first word starting with `-`), then only
    the listed primaries; never -exec, -delete, -fprint, -L/-H (following links) and the like."""
    texts = [w.text for w in words]
    i, n = 1, len(words)
    roots: list[int] = []
    while i < n and not texts[i].startswith("-"):
        _check("PATH", words[i], "find")
        roots.append(i)
        i += 1
    depth = None
    paths = [texts[k] for k in roots]
    while i < n:
        t = texts[i]
        if words[i].quoted:
            raise _Bad(f"quotes are allowed only around a glob: find ... -name '*.py'", i)
        if t in FIND_FLAGS:
            i += 1
            continue
        if t not in FIND_VALUED:
            raise _Bad(f"{t} is not an allowed option here: find takes {form.usage}" if t.startswith("-")
                       else f"{t}: find's folders come first: {form.usage}", i)
        if i + 1 >= n:
            raise Denied(f"{t} needs a value")
        kind = FIND_VALUED[t]
        _check(kind, words[i + 1], "find")
        if kind == "PATH":
            paths.append(texts[i + 1])
        if t == "-maxdepth":
            depth = int(texts[i + 1]) if depth is None else min(depth, int(texts[i + 1]))
        i += 2
    walks = [(k, texts[k], False, True, depth) for k in roots] or [(None, ".", False, True, depth)]
    return Match(form.usage, texts, paths, walks, [], words, 1 if not roots else None)
