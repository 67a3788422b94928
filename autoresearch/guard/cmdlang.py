"""The Bash command language the agent may use: a few forms over a character set where bash's
word splitting is trivial, so the guard knows exactly which program runs with which arguments
(tests/guard/test_guard_bash_diff.py proves it against real bash).

Why not parse shell: a parser of arbitrary bash cannot prove a string harmless (a quoted word
followed by a backslash escape was two words to tree-sitter and one to bash). This lexer
accepts only strings whose meaning to bash is obvious:

- plain words from `SAFE` (letters, digits, `. _ / = : , + -`), separated by single spaces;
  `~` and `^` inside a word (never first, never after `:` or `=`, where bash would expand a
  `~`), and only in a git revision (`HEAD~1`, `HEAD^`);
- up to MAX_QUOTED quoted words: '...' without `'`, or "..." without `" $ ` \\ !`, with no control
  characters, each a whole word or glued to a `--option=` (`--include="*.py"`), and only where
  the form takes free text (the -m text, a search pattern, a glob);
- nothing else: no `; | & < > * ? [ ] { } $ # ( ) \\`, newlines, tabs or runs of spaces.

Two kinds of form. TEMPLATES are fixed word sequences: literal words, `[optional groups]` and
the slot kinds TEXT (free text), PATH (a file the caller checks with the Read policy), N (a
count), REV (a git revision). OPTION_FORMS are the read-only tools with the options an agent
habitually types, in any order, parsed as GNU getopt (or git) parses them: short flags alone or
clustered (`-rn`), an option's value attached or as the next word (`-A3`, `-A 3`,
`--include=GLOB`), `--` ending the options; any option not listed is refused, so no option that
executes, writes or follows links (`rg --pre`, `find -exec`, `git diff --output`) can pass.
Every path operand is judged by the Read policy; a search or listing that walks a folder
(`grep -r`, `rg`, `find`, `ls -R`) is judged by everything below it (search.reach_problem).
"""
from __future__ import annotations

import json
import os

MAX_COMMAND = 4096              # characters; longer is not a command a research loop needs
MAX_QUOTED = 4                  # quoted words per command

TEMPLATES = (
    "./run.sh -m TEXT",
    "./run.sh -m TEXT --queue",
    "./run.sh --wait",
    "git status",
    "nvidia-smi",
    "pwd",
)
SLOTS = ("TEXT", "PATH", "N", "REV")   # the kinds TEMPLATES use
SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/=:,+-")
REV_MARKS = frozenset("~^")     # inside a revision word only (lex keeps them off a word's start)


class OptForm:
    """A read-only program whose options come in any order.

    flags: short flags (clusterable when `cluster`); valued: short options taking a value, by
    slot kind; longs: long flags; long_valued: long options taking a value; num: `-N` (a count
    given as the option: `head -50`, `git log -5`; for head/tail only as the first word, as
    coreutils reads it); operands: how the words that are not options are read (see _operands);
    usage: the form shown to the agent."""
    __slots__ = ("prog", "flags", "valued", "longs", "long_valued", "num", "cluster", "operands", "usage",
                 "examples")

    def __init__(self, prog, flags="", valued=None, longs=(), long_valued=None, num=False, cluster=True,
                 operands="paths+", usage="", examples=()):
        self.prog, self.flags, self.valued = tuple(prog.split()), flags, dict(valued or {})
        self.longs, self.long_valued = frozenset(longs), dict(long_valued or {})
        self.num, self.cluster, self.operands, self.usage = num, cluster, operands, usage
        self.examples = examples


_GREP_LONG = {"--line-number": "-n", "--ignore-case": "-i", "--recursive": "-r", "--dereference-recursive": "-R",
              "--files-with-matches": "-l", "--count": "-c", "--word-regexp": "-w", "--extended-regexp": "-E",
              "--fixed-strings": "-F", "--invert-match": "-v", "--with-filename": "-H", "--no-filename": "-h",
              "--only-matching": "-o", "--files-without-match": "-L", "--quiet": "-q", "--no-messages": "-s"}
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
)
_BY_PROG = {f.prog: f for f in OPTION_FORMS}
FIND_FLAGS = {"-print", "-not", "-o", "-a", "-or", "-and", "-empty"}
FIND_VALUED = {"-name": "GLOB", "-iname": "GLOB", "-path": "GLOB", "-ipath": "GLOB", "-type": "FTYPE",
               "-maxdepth": "N", "-mindepth": "N", "-newer": "PATH"}


def _show(forms) -> str:
    return ", ".join(f"`{f}`" for f in forms).replace("TEXT", '"<what changed and why>"')


ALLOWED = _show(TEMPLATES[:3]) + "; to look: " + ", ".join(
    f"`{f.usage}`" for f in OPTION_FORMS) + ", `git status`, `pwd`, `nvidia-smi`"
USE_INSTEAD = "read files with the Read tool; search with grep -rn PATTERN FOLDER or find FOLDER -name GLOB"

# Why a character cannot appear outside a quoted text (the first one found is reported).
_GLOB_WHY = ("glob characters (* ? [ ]) are not allowed unquoted: name the file, or quote the pattern "
             "of a search: find src -name '*.py', grep -rn TEXT src --include='*.py'")
_CHAR_WHY = {
    ";": "one command per call: no ; & | or newlines",
    "&": "one command per call: no ; & | or newlines (and no background jobs)",
    "|": "one command per call: no pipes (output comes back to you whole; grep a file, or use head -n N FILE)",
    "\n": "one command per call: no ; & | or newlines",
    "<": "redirection is not allowed: output comes back to you as it is",
    ">": "redirection is not allowed: output comes back to you as it is",
    "$": "$ expansions and substitutions are not allowed: write the value itself",
    "`": "backticks are not allowed: write the value itself",
    "*": _GLOB_WHY, "?": _GLOB_WHY, "[": _GLOB_WHY, "]": _GLOB_WHY,
    "~": "~ is not allowed: name paths relative to the project (~ only inside a git revision: HEAD~1)",
    "^": "^ is allowed only inside a git revision (HEAD^)",
    "{": "braces are not allowed: write each word out",
    "}": "braces are not allowed: write each word out",
    "#": "comments (#) are not allowed",
    "(": "parentheses (subshells, functions) are not allowed",
    ")": "parentheses (subshells, functions) are not allowed",
    "\\": "backslashes are not allowed outside a quoted text",
    "!": "! is not allowed",
    "\t": "tabs are not allowed: separate words with single spaces",
}


class Denied(Exception):
    """The command is not in the language; str(self) is the reason, written for the agent."""


class Word:
    """One word, exactly as bash will pass it: its text, whether a quoted text is part of it, and
    how it was typed (for suggestions)."""
    __slots__ = ("text", "quoted", "raw")

    def __init__(self, text: str, quoted: bool = False, raw: str | None = None):
        self.text, self.quoted = text, quoted
        self.raw = text if raw is None else raw

    def __repr__(self) -> str:
        return f"Word({self.text!r}{', quoted' if self.quoted else ''})"


class Match:
    """An accepted command: the form it fits, the argv bash will exec, its PATH operands (each
    judged by the Read policy), the folders it walks (path, follow links, names only, max depth),
    and git object paths (REV:PATH, judged by name)."""
    __slots__ = ("template", "argv", "paths", "walks", "names", "words", "implicit")

    def __init__(self, template: str, argv: list[str], paths: list[str], walks=None, names=None,
                 words=None, implicit=None):
        self.template, self.argv, self.paths = template, argv, paths
        self.walks = walks or []        # [(word index or None for the working folder, path, follow, names_only, depth)]
        self.names = names or []
        self.words = words or []
        self.implicit = implicit        # where a search's implied folder would go, as a word index


def _bad_text_char(ch: str) -> str | None:
    """Why `ch` may not appear in a quoted text (None: it may)."""
    if ch < " " or ch == "\x7f":
        return f"control character {ch!r} is not allowed, not even in a quoted text: write one line"
    if ch > "\x7f":
        import unicodedata
        if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp", "Zs"):
            return f"invisible or unusual character U+{ord(ch):04X} is not allowed"
    return None


def lex(command) -> list[Word]:
    """Split `command` into words exactly as bash does, or raise Denied. Exact because the only
    strings accepted are single-space-separated plain words from SAFE (with `~ ^` inside a word,
    where bash gives them no meaning), and quoted texts whose quote character and bash's
    in-quote specials do not occur inside, each a whole word or glued to a plain `-...=` prefix."""
    if not isinstance(command, str) or not command.strip(" "):
        raise Denied("empty command")
    if len(command) > MAX_COMMAND:
        raise Denied(f"the command is too long ({len(command)} characters; the limit is {MAX_COMMAND})")
    words: list[Word] = []
    nquoted = 0
    i, n = 0, len(command)
    while True:
        if i >= n or command[i] == " ":
            raise Denied("separate words with single spaces (no leading, trailing or double spaces)")
        start = i
        while i < n and (command[i] in SAFE or (command[i] in REV_MARKS and i > start
                                                 and command[i - 1] not in ":=")):
            i += 1
        prefix = command[start:i]
        if i < n and command[i] in "'\"":
            ch = command[i]
            if prefix and not (prefix.startswith("-") and prefix.endswith("=")):
                raise Denied("a quoted text must be a whole word (a space before the opening quote), "
                             "or the value of an --option=")
            if nquoted >= MAX_QUOTED:
                raise Denied(f"at most {MAX_QUOTED} quoted texts per command")
            end = command.find(ch, i + 1)
            if end < 0:
                raise Denied(f"unterminated {ch} quote")
            text = command[i + 1:end]
            for c in text:
                why = _bad_text_char(c)
                if why:
                    raise Denied(why)
                if ch == '"' and c in '$`\\!':
                    raise Denied(f"{c!r} is not allowed inside double quotes: use single quotes")
            nquoted += 1
            words.append(Word(prefix + text, True, command[start:end + 1]))
            i = end + 1
            if i < n and command[i] != " ":
                raise Denied("a quoted text must be a whole word (a space after the closing quote)")
        else:
            if i < n and command[i] != " ":
                c = command[i]
                if c in _CHAR_WHY:
                    raise Denied(_CHAR_WHY[c])
                why = _bad_text_char(c)
                if why:
                    raise Denied(why)
                if c > "\x7f":
                    raise Denied(f"{c!r} (U+{ord(c):04X}) is not allowed outside a quoted text: "
                                 "plain words are ASCII letters, digits and . _ / = : , + -")
                raise Denied(f"{c!r} is not allowed outside a quoted text: "
                             "plain words are letters, digits and . _ / = : , + -")
            words.append(Word(prefix))
        if i == n:
            return words
        i += 1                                   # the single space


def _expand(template: str) -> list[list[str]]:
    """Every exact word sequence a template stands for (each [group] present or absent)."""
    seqs: list[list[str]] = [[]]
    group: list[str] | None = None
    for item in template.split():
        if item.startswith("["):
            group, item = [], item[1:]
        closes = item.endswith("]")
        item = item.rstrip("]")
        if group is None:
            seqs = [s + [item] for s in seqs]
        else:
            group.append(item)
            if closes:
                seqs = seqs + [s + group for s in seqs]
                group = None
    return seqs


_FORMS: list[tuple[str, list[str]]] = [(t, seq) for t in TEMPLATES for seq in _expand(t)]
PROGRAMS = {t.split()[0] for t in TEMPLATES} | {f.prog[0] for f in OPTION_FORMS}
QUOTABLE = ("TEXT", "PATTERN", "GLOB")


def _slot_problem(kind: str, word: Word, program: str) -> str | None:
    text = word.text
    if word.quoted and kind not in QUOTABLE:
        return ("quotes are allowed only around the text of ./run.sh -m, a search pattern or a glob: "
                f"write {text} without quotes")
    if kind != "REV" and not word.quoted and any(c in REV_MARKS for c in text):
        return f"{text}: ~ and ^ are allowed only inside a git revision (HEAD~1, HEAD^)"
    if kind == "TEXT":
        if program == "./run.sh" and not text.strip():
            return f'give {program} -m a description: {program} -m "what changed and why"'
        if text.startswith("-"):
            return ("the description may not start with '-' (it would read as an option)" if program == "./run.sh"
                    else f"the pattern {text!r} starts with '-': give it as -e {text}")
    elif kind == "PATTERN":                 # the value of -e: may start with '-'
        pass
    elif kind == "N":
        if not (text.isdigit() and text.isascii() and len(text) <= 6):
            return f"{text} is not a count (digits only)"
    elif kind == "GLOB":
        if not text:
            return "an empty glob"
    elif kind == "TYPE":
        if not (text.isalnum() and text.isascii()):
            return f"{text} is not a file type name"
    elif kind == "FTYPE":
        if text not in ("f", "d", "l"):
            return f"-type {text}: only -type f, -type d or -type l"
    elif text.startswith("-"):
        return f"{text} is not an allowed option here"
    elif kind == "PATH" and text == "":
        return "an empty path"
    return None


def _check(kind: str, word: Word, program: str) -> None:
    why = _slot_problem(kind, word, program)
    if why:
        raise Denied(why)


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
            if name in form.longs and not eq:
                opts.append((name, None))
            elif name in form.long_valued:
                kind = form.long_valued[name]
                if eq:
                    vw = Word(val, w.quoted and len(val) < len(w.raw))
                    if w.quoted and not w.raw.startswith(name + "="):
                        raise Denied(f"quote only the value of {name}=")
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
        i += 1
    return opts, operands, dashdash


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


def match(command) -> Match:
    """The form `command` fits, or Denied with the most useful reason."""
    words = lex(command)
    texts = [w.text for w in words]
    slot_why = None
    for template, seq in _FORMS:
        if len(seq) != len(words) or words[0].quoted or seq[0] != texts[0]:
            continue
        paths: list[str] = []
        for kind, word in zip(seq[1:], words[1:]):
            if kind in SLOTS:
                why = _slot_problem(kind, word, texts[0])
                if why:
                    slot_why = slot_why or why
                    break
                if kind == "PATH":
                    paths.append(word.text)
            elif word.quoted or word.text != kind:
                break
        else:
            return Match(template, texts, paths)
    if slot_why:
        raise Denied(slot_why)
    name = texts[0]
    if not words[0].quoted:
        form = (_BY_PROG.get(tuple(texts[:2])) if len(words) > 1 and not words[1].quoted else None) \
            or _BY_PROG.get((name,))
        if form:
            try:
                return _match_optform(form, words)
            except _Bad as e:
                nxt = e.index + 1
                if "=" not in texts[e.index] and nxt < len(words) and not texts[nxt].startswith("-"):
                    raise Denied(str(e)) from None  # it may take the next word as its value: no guess
                rest = " ".join(w.raw for k, w in enumerate(words) if k != e.index)
                try:
                    match(rest)
                except Denied:
                    raise Denied(str(e)) from None
                raise Denied(f"{e}; without it: `{rest}`") from None
    forms = [t for t in TEMPLATES if t.split()[0] == name] + [f.usage for f in OPTION_FORMS if f.prog[0] == name]
    if forms:
        raise Denied(f"{name} runs only as: {_show(forms)}; {USE_INSTEAD}")
    raise Denied(f"{name} is not a command you can run")


# ---------------------------------------------------------------------------
# Denied commands: the most useful reason. Cheap string checks, on the denied path only;
# they never allow anything.

RUN_HINT = 'run experiments with ./run.sh -m "what changed and why"'
INSTALL = "{} is disabled: dependencies are fixed in container/; note the idea in scratchpad.md instead"
INSTALL_LEGACY = ("{} is disabled: this repo's training environment is fixed by a human: runs use {python} "
                  "(recorded by autoresearch init; a human installs packages into it), or the Docker image "
                  "named by sandbox.image in program.md. Note the package and why in scratchpad.md instead")
NETWORK = "{} is disabled: there is no network access; everything the loop needs is local"
GIT_WRITE = ("git {} is not allowed: trusted code does git (the Stop hook commits or reverts); "
             "you may run git status, git diff [--stat] [REV] [-- PATH], git log [--oneline] [-N], "
             "git show REV [--stat], git show REV:PATH")
_GROUPS = {
    INSTALL: "pip pip3 pipx uv uvx conda mamba micromamba poetry pdm hatch pipenv easy_install apt apt-get "
             "aptitude dpkg yum dnf apk brew snap npm npx yarn pnpm bun gem cargo rustup go nix spack",
    NETWORK: "curl wget nc ncat netcat ssh scp sftp rsync ftp tftp telnet socat http https httpie aria2c "
             "lynx w3m links dig nslookup host ping traceroute openssl gh hf huggingface-cli",
    "{} is disabled: files change only through the Edit tool (train.py, scratchpad.md)":
        "cp mv rm ln chmod chown chgrp touch mkdir rmdir tee dd truncate install shred patch unlink "
        "mkfifo mknod tar zip unzip gzip gunzip bzip2 xz zstd split csplit vi vim nvim nano emacs ed ex sed",
    "{} is disabled: nothing runs outside the sandbox; " + RUN_HINT:
        "python python3 python2 ipython jupyter node deno perl ruby php lua luajit R Rscript julia java "
        "javac gcc cc clang make cmake ninja bash sh zsh dash ksh fish csh tcsh eval source docker podman "
        "kubectl torchrun accelerate deepspeed pytest ./train.py ./prepare.py train.py prepare.py awk gawk "
        "env sudo doas su command builtin exec timeout nice nohup xargs parallel setsid time strace chroot "
        "unshare nsenter busybox",
}
_KNOWN = {name: msg for msg, names in _GROUPS.items() for name in names.split()}
_GIT_NETWORK = ("push", "pull", "fetch", "clone", "remote", "ls-remote", "submodule", "send-email")


def install_reason(name: str, root: str | None = None) -> str:
    """Why `pip` (or any installer) is denied, and where a dependency goes in THIS project: the
    bundle's container/ when it has one; else (a repo set up by `autoresearch init`) the Python that
    init recorded in .autoresearch/bundle.json, or the image in sandbox.image. `root` defaults to
    $CLAUDE_PROJECT_DIR; read on the denied path only, and any error gives the bundle's text."""
    root = root or os.environ.get("CLAUDE_PROJECT_DIR")
    try:
        if not root or os.path.isdir(os.path.join(root, "container")):
            return INSTALL.format(name)
        with open(os.path.join(root, ".autoresearch", "bundle.json"), encoding="utf-8") as f:
            python = str(json.load(f)["python"])
    except (OSError, ValueError, KeyError, TypeError):
        return INSTALL.format(name)
    return INSTALL_LEGACY.format(name, python=python)


def hint(command, reason: str, root: str | None = None) -> str:
    """The reason for a denied command: a specific one for what the agent was reaching for
    (pip, the network, a git write, running code), else the lexer's or template's reason,
    always with what it can use instead."""
    text = command if isinstance(command, str) else ""
    for ch in ";&|()$`'\"\\<>{}\n\t=":
        text = text.replace(ch, " ")
    tokens = text.split()
    names = [t.rsplit("/", 1)[-1] for t in tokens]
    if "/dev/tcp/" in text or "/dev/udp/" in text:
        return NETWORK.format("/dev/tcp")
    for t in names:                                   # `sudo pip`, `python -m pip`, `bash -c "curl ..."`
        if _KNOWN.get(t) == INSTALL or (t.startswith("pip") and t[3:].replace(".", "").isdigit()):
            return install_reason(t, root)
    for t in names:
        if _KNOWN.get(t) == NETWORK:
            return NETWORK.format(t)
    if names and names[0] == "git" and len(names) > 1 and names[1] not in ("status", "diff", "log", "show"):
        sub = names[1]
        if not sub.startswith("-"):
            return GIT_WRITE.format(sub) + ("; there is no network access either" if sub in _GIT_NETWORK else "")
    if names and names[0] in _KNOWN and names[0] not in PROGRAMS:
        return _KNOWN[names[0]].format(names[0])
    if names and (names[0].startswith("python") or tokens[0].endswith("/python")):
        return _KNOWN["python"].format(names[0])
    if " runs only as: " in reason or (tokens and tokens[0] in PROGRAMS):
        return reason
    return f"{reason}. Bash runs only: {ALLOWED}; {USE_INSTEAD}"
