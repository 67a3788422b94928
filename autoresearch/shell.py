"""Static analysis of one Bash tool command: parse it, then hold it to a read-only allowlist.

The parser is tree-sitter-bash. Why: it is a complete bash grammar in C that
imports in about 10 ms, so every tool call can afford it (bashlex costs ~100 ms
to import, and it rejects much valid bash), and it never guesses: what it
cannot parse becomes an ERROR or MISSING node, which we deny. We walk the tree
with a default-deny rule: only plain commands, pipes, `;`, `&&`, `||`, literal
words and strings, and redirections that write nowhere (`2>&1`, `>/dev/null`)
pass. Anything whose value depends on run time -- `$VAR`, `$(...)`, backticks,
`<(...)`, `$'...'`, brace expansion, bracket globs, `**` -- is denied, because a
guard that cannot know the value cannot know the command.

Two places where tree-sitter and bash could disagree are closed before parsing:
backslash-newline (bash joins the lines; tree-sitter splits the word) is denied,
and every byte of the input must belong to a token the walk saw (so nothing is
silently skipped). Unquoted words may only hold a small, boring character set.

`check(argv)` then decides one simple command after quote removal and glob
expansion (done by the caller, which owns the file system): the allowed
commands, the options of each that neither write nor run anything, and which
operands are files it will read (the caller checks those against the read
policy). Everything else raises `Unsafe` with a reason the agent can act on.
"""
from __future__ import annotations

import os
import sys

MAX_COMMAND = 8192          # bytes; longer is not a command a research loop needs

# Words the agent may call. Everything else is denied with the most specific reason we have.
ALLOWED = ("./run.sh -m \"...\"; cat head tail less ls wc grep sort uniq cut diff comm pwd echo; "
           "nvidia-smi; git status|diff|log|show|blame")
RUN_HINT = 'run experiments with ./run.sh -m "what changed and why"'

INSTALL = "{} is disabled: dependencies are fixed in container/; note the idea in scratchpad.md instead"
NETWORK = "{} is disabled: there is no network access; everything the loop needs is local"
GIT_WRITE = ("git {} is not allowed: trusted code does git (the Stop hook commits or reverts); "
             "you may use git status|diff|log|show|blame")
WRITE = "{} is disabled: files change only through the Edit tool (train.py, scratchpad.md)"
RUN = "{} is disabled: nothing runs outside the sandbox; " + RUN_HINT
WRAPPER = "{} runs other commands, so it is not allowed: run the allowed command itself"
ENVIRON = "{} is not allowed: the shell environment is fixed"

_GROUPS = {
    INSTALL: "pip pip3 pipx uv uvx conda mamba micromamba poetry pdm hatch pipenv easy_install apt apt-get "
             "aptitude dpkg yum dnf apk brew snap npm npx yarn pnpm bun gem cargo rustup go nix spack",
    NETWORK: "curl wget nc ncat netcat ssh scp sftp rsync ftp tftp telnet socat http https httpie aria2c "
             "lynx w3m links dig nslookup host ping traceroute openssl gh hf huggingface-cli",
    WRITE: "cp mv rm ln chmod chown chgrp touch mkdir rmdir tee dd truncate install shred patch unlink "
           "mkfifo mknod tar zip unzip gzip gunzip bzip2 xz zstd split csplit vi vim nvim nano emacs ed ex",
    RUN: "python python3 python2 ipython jupyter node deno perl ruby php lua luajit R Rscript julia java "
         "javac gcc cc clang make cmake ninja bash sh zsh dash ksh fish csh tcsh tclsh eval source . "
         "docker podman nerdctl kubectl torchrun accelerate deepspeed pytest ./train.py ./prepare.py "
         "train.py prepare.py",
    WRAPPER: "env sudo doas su command builtin exec timeout nice ionice nohup xargs parallel stdbuf setsid "
             "time strace ltrace gdb chroot unshare nsenter taskset chrt script watch flock fakeroot "
             "firejail bwrap busybox coproc systemd-run runuser",
    ENVIRON: "export set unset alias unalias declare typeset local readonly shopt trap ulimit umask hash enable",
}
_DENIED: dict[str, str] = {name: msg for msg, names in _GROUPS.items() for name in names.split()}
_DENIED.update({
    "sed": "sed is not allowed: read lines with the Read tool (offset/limit) or head/tail; "
           "edit with the Edit tool",
    "awk": "awk runs programs, so it is not allowed: use grep, cut, sort or the Read tool",
    "gawk": "gawk runs programs, so it is not allowed: use grep, cut, sort or the Read tool",
    "find": "find is not allowed (it can run and delete): use the Glob tool to find files",
    "cd": "cd is not needed: commands already run in the project folder",
    "pushd": "pushd is not needed: commands already run in the project folder",
    "popd": "popd is not needed: commands already run in the project folder",
    "kill": "stopping processes is not allowed",
    "pkill": "stopping processes is not allowed",
    "killall": "stopping processes is not allowed",
    "printenv": "printenv is not allowed: the environment may hold secrets",
    "run.sh": "call it as ./run.sh -m \"what changed and why\"",
})
_INSTALL_WORDS = set(_GROUPS[INSTALL].split())
_NETWORK_WORDS = set(_GROUPS[NETWORK].split())

# Node types, with the reason an agent gets when one appears.
_CONSTRUCTS = {
    "subshell": "subshells ( ... ) are not allowed: write plain commands (pipes, && and ; are fine)",
    "compound_statement": "{ ... } groups are not allowed: write plain commands (pipes, && and ; are fine)",
    "if_statement": "if/for/while/case are not allowed: write plain commands (pipes, && and ; are fine)",
    "for_statement": "if/for/while/case are not allowed: write plain commands (pipes, && and ; are fine)",
    "c_style_for_statement": "if/for/while/case are not allowed: write plain commands",
    "while_statement": "if/for/while/case are not allowed: write plain commands (pipes, && and ; are fine)",
    "case_statement": "if/for/while/case are not allowed: write plain commands (pipes, && and ; are fine)",
    "function_definition": "defining functions is not allowed: write plain commands",
    "test_command": "[ ... ] and [[ ... ]] tests are not allowed: write plain commands",
    "negated_command": "! negation is not allowed: write plain commands",
    "variable_assignment": "setting variables is not allowed (X=1 cmd included): write the value itself",
    "variable_assignments": "setting variables is not allowed: write the value itself",
    "declaration_command": "export/declare/local are not allowed: the shell environment is fixed",
    "unset_command": "unset is not allowed: the shell environment is fixed",
    "heredoc_redirect": "heredocs (<<) are not allowed: use the Edit tool for files",
    "herestring_redirect": "here-strings (<<<) are not allowed",
    "command_substitution": "$( ... ) and backticks are not allowed: run the inner command on its own first",
    "process_substitution": "<( ... ) and >( ... ) are not allowed: run the inner command on its own first",
    "simple_expansion": "$ expansions ($VAR) are not allowed: write the value itself (single quotes keep a literal $)",
    "expansion": "${ ... } expansions are not allowed: write the value itself",
    "arithmetic_expansion": "$(( ... )) is not allowed: write the number itself",
    "ansi_c_string": "$'...' strings are not allowed: use plain quotes",
    "translated_string": "$\"...\" strings are not allowed: use plain quotes",
    "brace_expression": "brace expansion {a,b} is not allowed: write each word out (or quote it)",
    "ERROR": "the command does not parse as plain shell: simplify it",
}
_SEPARATORS = {";", "&&", "||", "|", "|&"}
_WORDS = {"word", "number", "raw_string", "string", "concatenation"}
_SAFE_UNQUOTED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:@%+,=-^#!~")
_GLOB = frozenset("*?")

_parser = None


class Unsafe(Exception):
    """The command is denied; str(self) is the reason, written for the agent."""


class Word:
    """One shell word after quote removal. `magic`: positions of unquoted * and ? (glob)."""
    __slots__ = ("text", "magic")

    def __init__(self, text: str, magic: tuple[int, ...] = ()):
        self.text, self.magic = text, magic

    def __repr__(self) -> str:
        return f"Word({self.text!r}{', glob' if self.magic else ''})"


def _get_parser():
    """tree-sitter's Python packages import `typing` and `importlib.resources` (~10 ms) just
    for type hints and query files; load the two C extensions directly instead."""
    global _parser
    if _parser is None:
        stubs = []
        for pkg in ("tree_sitter", "tree_sitter_bash"):
            if pkg not in sys.modules:
                d = next((f"{base}/{pkg}" for base in sys.path if os.path.isdir(f"{base}/{pkg}")), None)
                if d is not None:
                    sys.modules[pkg] = mod = type(sys)(pkg)
                    mod.__path__ = [d]
                    stubs.append(pkg)
        try:
            from tree_sitter._binding import Language, Parser
            from tree_sitter_bash._binding import language
        finally:
            for pkg in stubs:       # a later `import tree_sitter` runs the real package (reusing _binding)
                del sys.modules[pkg]
        _parser = Parser(Language(language()))
    return _parser


def precheck(source: str) -> None:
    """Refuse input that no parse of it could make safe."""
    if not isinstance(source, str) or not source.strip():
        raise Unsafe("empty command")
    n = len(source.encode("utf-8", "surrogatepass"))
    if n > MAX_COMMAND:
        raise Unsafe(f"the command is too long ({n} bytes; the limit is {MAX_COMMAND})")
    if "\x00" in source:
        raise Unsafe("NUL bytes are not allowed in commands")
    if "\\\n" in source or "\\\r\n" in source:
        raise Unsafe("line continuations (backslash-newline) are not allowed: write the command on one line")
    for ch in source:
        if ch < " " and ch not in "\n\t":
            raise Unsafe(f"control character {ch!r} is not allowed in commands")
    if not source.isascii():
        import unicodedata
        for ch in source:
            if ch > "\x7f" and unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp", "Zs"):
                raise Unsafe(f"invisible or unusual character U+{ord(ch):04X} is not allowed in commands")


def parse(source: str, home: str) -> list[list[Word]]:
    """The simple commands of `source`, as words; raises Unsafe for anything not fully understood."""
    precheck(source)
    raw = source.encode("utf-8", "surrogatepass")
    tree = _get_parser().parse(raw)
    root = tree.root_node
    covered: list[tuple[int, int]] = []
    commands: list[list[Word]] = []
    _statements(root, home, commands, covered)
    if root.has_error:                      # an ERROR/MISSING node the walk did not reach
        raise Unsafe(_CONSTRUCTS["ERROR"])
    _check_coverage(raw, covered)
    if not commands:
        raise Unsafe("no command found")
    return commands


def _check_coverage(raw: bytes, covered: list[tuple[int, int]]) -> None:
    """Every non-blank byte must lie in a token we inspected: nothing the parser skipped may run."""
    pos = 0
    for start, end in sorted(covered):
        if start > pos and raw[pos:start].strip(b" \t\n"):
            raise Unsafe(_CONSTRUCTS["ERROR"])
        pos = max(pos, end)
    if raw[pos:].strip(b" \t\n"):
        raise Unsafe(_CONSTRUCTS["ERROR"])


def _deny_node(node) -> Unsafe:
    if node.is_missing:
        return Unsafe("the command is incomplete (a quote, bracket or command is missing)")
    if node.type in _CONSTRUCTS:
        return Unsafe(_CONSTRUCTS[node.type])
    if node.type == "$":
        return Unsafe(_CONSTRUCTS["simple_expansion"])
    if node.type == "file_redirect":
        return Unsafe("this redirection is not allowed: output may go only to 2>&1 or /dev/null")
    text = node.text.decode("utf-8", "replace")[:40]
    return Unsafe(f"shell syntax {text!r} ({node.type}) is not allowed: write plain commands")


def _statements(node, home: str, out: list, covered: list) -> None:
    t = node.type
    if node.is_error or node.is_missing:
        raise _deny_node(node)
    if t in ("program", "list", "pipeline"):
        for c in node.children:
            if c.is_named:
                _statements(c, home, out, covered)
            elif c.type in _SEPARATORS:
                covered.append((c.start_byte, c.end_byte))
            elif c.type == "&":
                raise Unsafe("background jobs (&) are not allowed: run the command in the foreground")
            else:                               # `;;` outside case, and the like: bash would refuse it too
                raise Unsafe(_CONSTRUCTS["ERROR"])
    elif t == "comment":
        covered.append((node.start_byte, node.end_byte))
    elif t == "redirected_statement":
        body = node.child_by_field_name("body")
        if body is None:
            raise _deny_node(node)
        first = len(out)
        _statements(body, home, out, covered)
        try:
            for c in node.children:
                if c.id != body.id:
                    _redirect(c, covered)
        except Unsafe:
            if body.type == "command" and out[first][0].text not in _NAMES:
                # `bash <<EOF`, `xargs curl < urls`: the command's own reason says more
                raise Unsafe(why_not([out[first][0].text], node.text.decode("utf-8", "replace"))) from None
            raise
    elif t == "command":
        words: list[Word] = []
        try:
            for c in node.children:
                if c.type == "command_name":
                    if c.named_child_count != 1 or c.child_count != 1:
                        raise _deny_node(c)
                    words.append(_word(c.children[0], home, covered, first=True))
                elif c.type in _WORDS:
                    words.append(_word(c, home, covered))
                elif c.type.endswith("_redirect"):
                    _redirect(c, covered)
                else:
                    raise _deny_node(c)
        except Unsafe:
            # `find . -exec rm {} \;`, `bash -c "$(curl ...)"`: a command that is denied anyway
            # gets its own reason, not the syntax's.
            if words and words[0].text not in _NAMES:
                raise Unsafe(why_not([words[0].text], node.text.decode("utf-8", "replace"))) from None
            raise
        if not words:
            raise Unsafe("no command found")
        out.append(words)
    else:
        raise _deny_node(node)


def _redirect(node, covered: list) -> None:
    """Only redirections that write nowhere: fd duplication (2>&1) and /dev/null."""
    if node.type != "file_redirect":
        raise _deny_node(node)
    op, dest, fd = None, None, None
    for c in node.children:
        if c.type == "file_descriptor":
            fd = c
        elif not c.is_named:
            if op is not None:
                raise _deny_node(node)
            op = c.type
        elif dest is None:
            dest = c
        else:
            raise _deny_node(node)
    text = dest.text.decode() if dest is not None and dest.type in ("word", "number") else None
    ok = (op == ">&" and dest is not None and dest.type == "number" and text.isdigit()) or \
         (op in (">", ">>", "&>", "&>>", ">|", ">&") and text == "/dev/null")
    if not ok and any(d in node.text for d in (b"/dev/tcp/", b"/dev/udp/")):
        raise Unsafe(NETWORK.format("/dev/tcp"))
    if not ok:
        raise Unsafe("this redirection is not allowed: output may go only to 2>&1 or /dev/null "
                     "(files change only through the Edit tool)")
    if fd is not None and not fd.text.isdigit():
        raise _deny_node(node)
    covered.append((node.start_byte, node.end_byte))


def _word(node, home: str, covered: list, first: bool = False) -> Word:
    """Evaluate a literal word: quote removal, tilde at the start, glob positions recorded."""
    parts: list[tuple[str, bool]] = []          # (character, quoted)
    _pieces(node, parts, covered)
    text_chars: list[str] = []
    magic: list[int] = []
    for i, (ch, quoted) in enumerate(parts):
        if not quoted:
            if ch == "~":
                if i == 0:
                    nxt = parts[1] if len(parts) > 1 else None
                    if nxt is not None and nxt != ("/", False):
                        raise Unsafe("~user and ~+ expansions are not allowed: write the path itself")
                    text_chars.append(home)
                    continue
                if parts[i - 1] in (("=", False), (":", False)):
                    raise Unsafe("~ after = or : expands to a path: write the path itself")
            elif ch in _GLOB:
                if first:
                    raise Unsafe("globs (* ?) are not allowed in the command name")
                magic.append(sum(len(c) for c in text_chars))
        text_chars.append(ch)
    return Word("".join(text_chars), tuple(magic))


def _pieces(node, parts: list, covered: list) -> None:
    t = node.type
    if t == "concatenation":
        for c in node.children:
            if c.type not in _WORDS or c.type == "concatenation":
                raise _deny_node(c)
            _pieces(c, parts, covered)
        return
    covered.append((node.start_byte, node.end_byte))
    text = node.text.decode("utf-8", "surrogatepass")
    if t in ("word", "number"):
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                if i + 1 >= len(text):
                    raise Unsafe("a trailing backslash is not allowed")
                parts.append((text[i + 1], True))
                i += 2
                continue
            if ch not in _SAFE_UNQUOTED and ch not in _GLOB:
                if ch in "[]":
                    raise Unsafe("bracket globs [...] are not allowed: quote the text")
                if ch in "{}":
                    raise Unsafe(_CONSTRUCTS["brace_expression"])
                raise Unsafe(f"unquoted {ch!r} is not allowed here: quote the text")
            parts.append((ch, False))
            i += 1
    elif t == "raw_string":
        parts.extend((ch, True) for ch in text[1:-1])
    elif t == "string":
        for c in node.children:
            if c.type == '"' and not c.is_named:
                continue
            if c.type != "string_content":
                raise _deny_node(c)
        body = text[1:-1]
        i = 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body) and body[i + 1] in '$`"\\\n':
                parts.append((body[i + 1], True))
                i += 2
                continue
            if ch in "$`":
                raise Unsafe(_CONSTRUCTS["simple_expansion"] if ch == "$" else _CONSTRUCTS["command_substitution"])
            parts.append((ch, True))
            i += 1
    else:
        raise _deny_node(node)


# ---------------------------------------------------------------------------
# The allowlist: commands, their harmless options, and which operands they read.

class Opts:
    """A getopt_long-style option grammar. Long options match exactly (GNU and git accept
    unambiguous prefixes such as --out for --output; we do not), unknown options are denied."""
    __slots__ = ("flags", "values", "optional", "long", "long_values", "long_optional", "numeric", "denied")

    def __init__(self, flags: str = "", values: str = "", optional: str = "", long: str = "",
                 long_values: str = "", long_optional: str = "", numeric: bool = False,
                 denied: dict[str, str] | None = None):
        self.flags, self.values, self.optional = flags, values, optional
        self.long, self.long_values, self.long_optional = set(long.split()), set(long_values.split()), \
            set(long_optional.split())
        self.numeric, self.denied = numeric, denied or {}

    def parse(self, cmd: str, args: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
        opts: list[tuple[str, str | None]] = []
        operands: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            i += 1
            if a == "--":
                operands.extend(args[i:])
                break
            if a.startswith("--"):
                key, eq, val = a[2:].partition("=")
                name = "--" + key
                self._refuse(cmd, name)
                if key in self.long and not eq:
                    opts.append((name, None))
                elif key in self.long_values:
                    if not eq:
                        if i >= len(args):
                            raise Unsafe(f"{cmd} {name} needs a value")
                        val, i = args[i], i + 1
                    opts.append((name, val))
                elif key in self.long_optional:
                    opts.append((name, val if eq else None))
                else:
                    raise Unsafe(f"{cmd} {name} is not an allowed option (read-only options only)")
            elif a.startswith("-") and len(a) > 1:
                if self.numeric and a[1:].isdigit():
                    opts.append(("-N", a[1:]))
                    continue
                j = 1
                while j < len(a):
                    c = a[j]
                    j += 1
                    name = "-" + c
                    self._refuse(cmd, name)
                    if c in self.flags:
                        opts.append((name, None))
                    elif c in self.values:
                        val = a[j:]
                        if not val:
                            if i >= len(args):
                                raise Unsafe(f"{cmd} {name} needs a value")
                            val, i = args[i], i + 1
                        opts.append((name, val))
                        break
                    elif c in self.optional:
                        opts.append((name, a[j:] or None))
                        break
                    else:
                        raise Unsafe(f"{cmd} {name} is not an allowed option (read-only options only)")
            else:
                operands.append(a)
        return opts, operands

    def _refuse(self, cmd: str, name: str) -> None:
        if name in self.denied:
            raise Unsafe(f"{cmd} {name}: {self.denied[name]}")


class Effect:
    """What an allowed command does that the caller must still check."""
    __slots__ = ("reads", "experiment")

    def __init__(self, reads: list[str] | None = None, experiment: bool = False):
        self.reads, self.experiment = reads or [], experiment


_FOLLOW = "would never end (the Bash tool would hang): read the file instead"
_RECURSE = "searching folders is done with the Grep tool (it knows what is off limits)"
_FILE = "reads arbitrary file lists: name the files instead"

_TEXT = {
    "cat": Opts("AbeEnstTuv", long="show-all number-nonblank show-ends number squeeze-blank show-tabs "
                                   "show-nonprinting"),
    "head": Opts("qvz", "nc", long="quiet silent verbose zero-terminated", long_values="lines bytes",
                 numeric=True),
    "tail": Opts("qvz", "nc", long="quiet silent verbose zero-terminated", long_values="lines bytes",
                 numeric=True, denied={"-f": _FOLLOW, "-F": _FOLLOW, "--follow": _FOLLOW, "--retry": _FOLLOW,
                                       "--pid": _FOLLOW, "-s": _FOLLOW, "--sleep-interval": _FOLLOW}),
    "wc": Opts("clmwL", long="bytes chars lines words max-line-length",
               denied={"--files0-from": _FILE}),
    "sort": Opts("bdfgiMhnRrVcCsumz", "ktS", long="ignore-leading-blanks dictionary-order ignore-case "
                 "general-numeric-sort ignore-nonprinting month-sort human-numeric-sort numeric-sort "
                 "random-sort reverse version-sort stable unique zero-terminated merge debug",
                 long_values="key field-separator buffer-size sort parallel", long_optional="check",
                 denied={"-o": "writes a file", "--output": "writes a file", "-T": "writes temporary files",
                         "--temporary-directory": "writes temporary files",
                         "--compress-program": "runs a program", "--files0-from": _FILE,
                         "--random-source": _FILE}),
    "uniq": Opts("cdDiuz", "fsw", long="count repeated ignore-case unique zero-terminated",
                 long_values="skip-fields skip-chars check-chars", long_optional="all-repeated group"),
    "cut": Opts("snz", "bcfd", long="complement only-delimited zero-terminated",
                long_values="bytes characters fields delimiter output-delimiter"),
    "diff": Opts("abBdeEiNpqstTuwy", "CUWIx", long="brief report-identical-files side-by-side ignore-case "
                 "ignore-all-space ignore-space-change ignore-blank-lines ignore-tab-expansion "
                 "ignore-trailing-space strip-trailing-cr text new-file unidirectional-new-file minimal "
                 "speed-large-files expand-tabs initial-tab suppress-common-lines left-column "
                 "show-c-function normal no-dereference",
                 long_values="label exclude ignore-matching-lines width tabsize show-function-line",
                 long_optional="unified context color",
                 denied={"-r": _RECURSE, "--recursive": _RECURSE, "-l": "runs pr", "--paginate": "runs pr",
                         "-X": _FILE, "--exclude-from": _FILE, "--from-file": _FILE, "--to-file": _FILE}),
    "comm": Opts("123z", long="check-order nocheck-order zero-terminated total",
                 long_values="output-delimiter"),
    "grep": Opts("EFGPiyvwxcLlohHnTZzasIUbq", "eABCm", long="extended-regexp fixed-strings basic-regexp "
                 "perl-regexp ignore-case no-ignore-case invert-match word-regexp line-regexp count "
                 "files-without-match files-with-matches only-matching quiet silent no-messages byte-offset "
                 "with-filename no-filename line-number initial-tab null null-data text line-buffered",
                 long_values="regexp after-context before-context context max-count label include exclude "
                 "exclude-dir binary-files", long_optional="color colour", numeric=True,
                 denied={"-r": _RECURSE, "-R": _RECURSE, "--recursive": _RECURSE,
                         "--dereference-recursive": _RECURSE, "-d": _RECURSE, "--directories": _RECURSE,
                         "-D": "not needed", "--devices": "not needed", "-f": "give patterns with -e instead",
                         "--file": "give patterns with -e instead", "--exclude-from": _FILE}),
    "ls": Opts("aAbBcCdfFgGhHiklLmnNopqQrRsStuUvxXZ1", "wIT", long="all almost-all escape ignore-backups "
               "directory classify no-group human-readable si dereference-command-line dereference inode "
               "numeric-uid-gid literal hide-control-chars show-control-chars quote-name reverse recursive "
               "size group-directories-first full-time author kibibytes",
               long_values="width ignore hide tabsize block-size sort time time-style format quoting-style "
               "indicator-style", long_optional="color classify hyperlink"),
}

_GIT_DIFF = ("patch no-patch raw patch-with-raw patch-with-stat numstat shortstat summary name-only "
             "name-status cached staged minimal patience histogram no-color no-renames check full-index "
             "binary ignore-space-at-eol ignore-space-change ignore-all-space ignore-blank-lines "
             "ignore-cr-at-eol function-context exit-code quiet no-ext-diff no-textconv no-prefix text "
             "merge-base compact-summary")
_GIT_DIFF_VALUES = "diff-filter word-diff-regex src-prefix dst-prefix unified inter-hunk-context " \
                   "diff-algorithm stat-width stat-name-width stat-count anchored"
_GIT_DIFF_OPTIONAL = "stat dirstat color word-diff color-words abbrev ignore-submodules relative " \
                     "find-renames find-copies break-rewrites color-moved"
_GIT_NO = {"--output": "writes a file", "--ext-diff": "runs an external program",
           "--textconv": "runs filter programs", "--no-index": "compares files outside the repository",
           "-O": _FILE, "--show-signature": "runs gpg", "--contents": _FILE,
           "--ignore-revs-file": _FILE, "-S": "not needed here", "--open-files-in-pager": "runs a pager"}
_GIT_LOG = ("oneline graph all reverse no-merges merges first-parent abbrev-commit no-abbrev-commit follow "
            "source left-right cherry-pick topo-order date-order author-date-order walk-reflogs boundary "
            "full-history simplify-merges ancestry-path no-walk children parents relative-date "
            "name-only no-decorate date-order remotes")
_GIT_LOG_VALUES = ("max-count skip since until after before author committer grep format date "
                   "min-parents max-parents")
_GIT_LOG_OPTIONAL = "decorate pretty branches tags glob notes"
_GIT_SUBCOMMANDS = {
    "status": Opts("sbvz", optional="u", long="short branch long verbose show-stash ahead-behind "
                   "no-ahead-behind renames no-renames null", long_optional="porcelain untracked-files "
                   "ignored ignore-submodules find-renames", denied=_GIT_NO),
    "diff": Opts("pusRwbaWz", "G", "UMCBl", long=_GIT_DIFF, long_values=_GIT_DIFF_VALUES,
                 long_optional=_GIT_DIFF_OPTIONAL, denied=_GIT_NO),
    "log": Opts("pusRwbaWzgm", "nGL", "UMCBl", long=_GIT_DIFF + " " + _GIT_LOG,
                long_values=_GIT_DIFF_VALUES + " " + _GIT_LOG_VALUES,
                long_optional=_GIT_DIFF_OPTIONAL + " " + _GIT_LOG_OPTIONAL, numeric=True, denied=_GIT_NO),
    "show": Opts("pusRwbaWzm", "G", "UMCBl", long=_GIT_DIFF + " " + _GIT_LOG,
                 long_values=_GIT_DIFF_VALUES + " " + _GIT_LOG_VALUES,
                 long_optional=_GIT_DIFF_OPTIONAL + " " + _GIT_LOG_OPTIONAL, denied=_GIT_NO),
    "blame": Opts("bclnfsetwp", "L", "MC", long="root show-stats porcelain line-porcelain incremental "
                  "show-name show-number show-email minimal", long_values="date abbrev", denied=_GIT_NO),
}
_NAMES = {"./run.sh", "echo", "pwd", "less", "git", "nvidia-smi", *_TEXT}
_NVIDIA = Opts("Lqx", "di", long="list-gpus query xml-format",
               long_values="display id query-gpu query-compute-apps query-accounted-apps format",
               denied={"-l": _FOLLOW, "--loop": _FOLLOW, "-lms": _FOLLOW, "--loop-ms": _FOLLOW,
                       "-f": "writes a file", "--filename": "writes a file"})
_PWD = Opts("LP")


def check(argv: list[str]) -> Effect:
    """Decide one simple command (after quote removal and glob expansion)."""
    name, args = argv[0], argv[1:]
    if name == "./run.sh":
        if len(args) != 2 or args[0] != "-m":
            raise Unsafe('only ./run.sh -m "what changed and why" is allowed: the harness fixes the '
                         "budget, seed and everything else")
        if not args[1].strip():
            raise Unsafe('give ./run.sh -m a description: ./run.sh -m "what changed and why"')
        if args[1].startswith("-"):
            raise Unsafe("the description may not start with '-' (it would read as an option)")
        return Effect(experiment=True)
    if name == "echo":
        return Effect()
    if name == "pwd":
        if _PWD.parse(name, args)[1]:
            raise Unsafe("pwd takes no operands")
        return Effect()
    if name == "less":
        # Claude Code's Bash tool has no terminal, so less only copies files (like cat) and runs no
        # `!command`; options (-o writes a log file) and +commands are refused all the same.
        if any(a.startswith(("-", "+")) for a in args):
            raise Unsafe("less takes no options here (it has no terminal): use cat, head or tail")
        return Effect(reads=list(args))
    if name in _TEXT:
        opts, operands = _TEXT[name].parse(name, args)
        if name == "grep" and not any(o in ("-e", "--regexp") for o, _ in opts):
            operands = operands[1:]                 # the pattern
        if name == "uniq" and len(operands) > 1:
            raise Unsafe("uniq's second file is an output file: give it at most one file")
        return Effect(reads=[o for o in operands if o != "-"])
    if name == "git":
        return _git(args)
    if name == "nvidia-smi":
        if (args and not args[0].startswith("-")) or _NVIDIA.parse(name, args)[1]:
            raise Unsafe("nvidia-smi subcommands are not allowed: use nvidia-smi, -L or --query-gpu=...")
        return Effect()
    raise Unsafe(why_not(argv))


def _git(args: list[str]) -> Effect:
    while args and args[0] == "--no-pager":
        args = args[1:]
    if not args:
        raise Unsafe("git needs a subcommand: status, diff, log, show or blame")
    sub = args[0]
    if sub.startswith("-"):
        raise Unsafe(f"git {sub} is not allowed: git runs on this repository as it is "
                     "(no -C, -c, --git-dir, --work-tree, --exec-path)")
    if sub not in _GIT_SUBCOMMANDS:
        if sub in ("push", "pull", "fetch", "clone", "remote", "ls-remote", "submodule", "archive", "send-email"):
            raise Unsafe(GIT_WRITE.format(sub) + "; there is no network access either")
        raise Unsafe(GIT_WRITE.format(sub))
    _GIT_SUBCOMMANDS[sub].parse(f"git {sub}", args[1:])
    if any("%G" in a for a in args):
        raise Unsafe("git format %G placeholders run gpg (which may fetch keys): leave them out")
    return Effect()


def why_not(argv: list[str], source: str = "") -> str:
    """The most useful reason to deny a command that is not on the allowlist."""
    name = argv[0]
    base = name.rsplit("/", 1)[-1]
    text = " ".join([*argv, source])
    for ch in ";&|()$`'\"\\<>{}":
        text = text.replace(ch, " ")
    if "/dev/tcp/" in text or "/dev/udp/" in text:
        return NETWORK.format("/dev/tcp")
    tokens = {t.rsplit("/", 1)[-1] for t in text.split()}
    for t in tokens:                                  # `sudo pip`, `python -m pip`, `bash -c "curl ..."`
        if t in _INSTALL_WORDS or (t.startswith("pip") and t[3:].replace(".", "").isdigit()):
            return INSTALL.format(t)
    for t in tokens:
        if t in _NETWORK_WORDS:
            return NETWORK.format(t)
    if name in _DENIED or base in _DENIED:
        msg = _DENIED.get(name) or _DENIED[base]
        return msg.format(base) if "{}" in msg else msg
    if base.startswith("python") or base.startswith("pip"):
        return (INSTALL if base.startswith("pip") else RUN).format(base)
    if "/" in name and base in (*_TEXT, "echo", "pwd", "less", "git", "nvidia-smi"):
        return f"call {base} by its name, not by a path"
    if "/" in name:
        return f"{name} is not allowed: nothing runs outside the sandbox; {RUN_HINT}"
    return (f"{name} is not on the allowlist. Allowed: {ALLOWED}. "
            "Use the Read, Grep and Glob tools for files")
