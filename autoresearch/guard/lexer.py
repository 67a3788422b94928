"""The Bash command language's lexer: words exactly as bash will pass them, or Denied.

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

Also the checks of one slot (a count, a path operand, a pattern...), shared by both kinds of form.
tests/guard/test_guard_bash_diff.py proves the lexer against real bash.
"""
from __future__ import annotations

MAX_COMMAND = 4096              # characters; longer is not a command a research loop needs
MAX_QUOTED = 4                  # quoted words per command
SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/=:,+-")
REV_MARKS = frozenset("~^")     # inside a revision word only (lex keeps them off a word's start)

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
    and git object paths (REV:PATH, judged by name); for `git grep`, its pathspecs (search.tracked_problem
    judges the tracked files they reach)."""
    __slots__ = ("template", "argv", "paths", "walks", "names", "words", "implicit", "tracked")

    def __init__(self, template: str, argv: list[str], paths: list[str], walks=None, names=None,
                 words=None, implicit=None, tracked=None):
        self.template, self.argv, self.paths = template, argv, paths
        self.walks = walks or []        # [(word index or None for the working folder, path, follow, names_only, depth)]
        self.names = names or []
        self.words = words or []
        self.implicit = implicit        # where a search's implied folder would go, as a word index
        self.tracked = tracked          # git grep: [(pathspec, given before any --: must exist)], else None


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

