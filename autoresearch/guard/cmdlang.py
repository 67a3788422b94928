"""The Bash command language the agent may use: a few templates over a character set where
bash's word splitting is trivial, so the guard knows exactly which program runs with which
arguments (tests/guard/test_guard_bash_diff.py proves it against real bash).

Why not parse shell: a parser of arbitrary bash cannot prove a string harmless (a quoted word
followed by a backslash escape was two words to tree-sitter and one to bash). This lexer
accepts only strings whose meaning to bash is obvious:

- plain words from `SAFE` (letters, digits, `. _ / = : , + -`), separated by single spaces;
- at most one quoted free-text word: '...' without `'`, or "..." without `" $ ` \\ !`,
  with no control characters, and only in a TEXT slot of a template;
- nothing else: no `; | & < > * ? [ ] ~ { } $ # ( ) \\`, newlines, tabs or runs of spaces.

A template is one line of `TEMPLATES`: literal words, `[optional groups]`, and the slot kinds
TEXT (free text), PATH (a file the caller checks with the Read policy), N (a count), REV (a
git revision). Adding a form is adding a line.
"""
from __future__ import annotations

import json
import os

MAX_COMMAND = 4096              # characters; longer is not a command a research loop needs

TEMPLATES = (
    "./run.sh -m TEXT",
    "./run.sh -m TEXT --queue",
    "./run.sh --wait",
    "git status",
    "git diff [--stat]",
    "git log [--oneline] [-n N]",
    "git show [--stat] REV",
    "ls [-l] [PATH]",
    "cat PATH",
    "head [-n N] PATH",
    "tail [-n N] PATH",
    "wc [-l] PATH",
    "nvidia-smi",
)
SLOTS = ("TEXT", "PATH", "N", "REV")
SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/=:,+-")


def _show(forms) -> str:
    return ", ".join(f"`{f}`" for f in forms).replace("TEXT", '"<what changed and why>"')


ALLOWED = _show(TEMPLATES)
USE_INSTEAD = "look at files with the Read, Grep and Glob tools"

# Why a character cannot appear outside the one quoted text (the first one found is reported).
_CHAR_WHY = {
    ";": "one command per call: no ; & | or newlines",
    "&": "one command per call: no ; & | or newlines (and no background jobs)",
    "|": "one command per call: no pipes (output comes back to you whole; use head or tail on a file)",
    "\n": "one command per call: no ; & | or newlines",
    "<": "redirection is not allowed: output comes back to you as it is",
    ">": "redirection is not allowed: output comes back to you as it is",
    "$": "$ expansions and substitutions are not allowed: write the value itself",
    "`": "backticks are not allowed: write the value itself",
    "*": "glob characters (* ? [ ]) are not allowed: name the file, or use the Glob tool",
    "?": "glob characters (* ? [ ]) are not allowed: name the file, or use the Glob tool",
    "[": "glob characters (* ? [ ]) are not allowed: name the file, or use the Glob tool",
    "]": "glob characters (* ? [ ]) are not allowed: name the file, or use the Glob tool",
    "~": "~ is not allowed: name paths relative to the project",
    "{": "braces are not allowed: write each word out",
    "}": "braces are not allowed: write each word out",
    "#": "comments (#) are not allowed",
    "(": "parentheses (subshells, functions) are not allowed",
    ")": "parentheses (subshells, functions) are not allowed",
    "\\": "backslashes are not allowed outside the one quoted text",
    "!": "! is not allowed",
    "\t": "tabs are not allowed: separate words with single spaces",
}


class Denied(Exception):
    """The command is not in the language; str(self) is the reason, written for the agent."""


class Word:
    """One word, exactly as bash will pass it: its text, and whether it was the quoted one."""
    __slots__ = ("text", "quoted")

    def __init__(self, text: str, quoted: bool = False):
        self.text, self.quoted = text, quoted

    def __repr__(self) -> str:
        return f"Word({self.text!r}{', quoted' if self.quoted else ''})"


class Match:
    """An accepted command: the template it fits, the argv bash will exec, and its PATH operands."""
    __slots__ = ("template", "argv", "paths")

    def __init__(self, template: str, argv: list[str], paths: list[str]):
        self.template, self.argv, self.paths = template, argv, paths


def _bad_text_char(ch: str) -> str | None:
    """Why `ch` may not appear in the quoted text (None: it may)."""
    if ch < " " or ch == "\x7f":
        return f"control character {ch!r} is not allowed, not even in the quoted text: write one line"
    if ch > "\x7f":
        import unicodedata
        if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp", "Zs"):
            return f"invisible or unusual character U+{ord(ch):04X} is not allowed"
    return None


def lex(command) -> list[Word]:
    """Split `command` into words exactly as bash does, or raise Denied. Exact because the only
    strings accepted are single-space-separated plain words from SAFE, plus one whole-word
    quoted text whose quote character and bash's in-quote specials do not occur inside."""
    if not isinstance(command, str) or not command.strip(" "):
        raise Denied("empty command")
    if len(command) > MAX_COMMAND:
        raise Denied(f"the command is too long ({len(command)} characters; the limit is {MAX_COMMAND})")
    words: list[Word] = []
    quoted = False
    i, n = 0, len(command)
    while True:
        if i >= n or command[i] == " ":
            raise Denied("separate words with single spaces (no leading, trailing or double spaces)")
        ch = command[i]
        if ch in "'\"":
            if quoted:
                raise Denied("at most one quoted text per command")
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
            words.append(Word(text, True))
            quoted = True
            i = end + 1
            if i < n and command[i] != " ":
                raise Denied("a quoted text must be a whole word (a space after the closing quote)")
        else:
            start = i
            while i < n and command[i] in SAFE:
                i += 1
            if i < n and command[i] != " ":
                c = command[i]
                if c in "'\"":
                    raise Denied("a quoted text must be a whole word (a space before the opening quote)")
                if c in _CHAR_WHY:
                    raise Denied(_CHAR_WHY[c])
                why = _bad_text_char(c)
                if why:
                    raise Denied(why)
                if c > "\x7f":
                    raise Denied(f"{c!r} (U+{ord(c):04X}) is not allowed outside the quoted text: "
                                 "plain words are ASCII letters, digits and . _ / = : , + -")
                raise Denied(f"{c!r} is not allowed outside the quoted text: "
                             "plain words are letters, digits and . _ / = : , + -")
            words.append(Word(command[start:i]))
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
PROGRAMS = {t.split()[0] for t in TEMPLATES}


def _slot_problem(kind: str, word: Word, program: str) -> str | None:
    text = word.text
    if kind != "TEXT" and word.quoted:
        return "quotes are allowed only around the text of ./run.sh -m"
    if kind == "TEXT":
        if not text.strip():
            return f'give {program} -m a description: {program} -m "what changed and why"'
        if text.startswith("-"):
            return "the description may not start with '-' (it would read as an option)"
    elif kind == "N":
        if not (text.isdigit() and text.isascii() and len(text) <= 6):
            return f"{text} is not a count (digits only)"
    elif text.startswith("-"):
        return f"{text} is not an allowed option here"
    return None


def match(command) -> Match:
    """The template `command` fits, or Denied with the most useful reason."""
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
    forms = [t for t in TEMPLATES if t.split()[0] == name]
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
             "you may run git status, git diff [--stat], git log [--oneline] [-n N], git show [--stat] REV")
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
    if " runs only as: " in reason:
        return reason
    return f"{reason}. Bash runs only: {ALLOWED}; {USE_INSTEAD}"
