"""The Bash command language the agent may use: a few forms over a character set where bash's
word splitting is trivial, so the guard knows exactly which program runs with which arguments
(lexer.py says which strings; tests/guard/test_guard_bash_diff.py proves it against real bash).

Two kinds of form. TEMPLATES are fixed word sequences: literal words, `[optional groups]` and
the slot kinds TEXT (free text), PATH (a file the caller checks with the Read policy), N (a
count), REV (a git revision). OPTION_FORMS (optforms.py) are the read-only tools with the
options an agent habitually types, in any order. Every path operand is judged by the Read
policy; a search or listing that walks a folder (`grep -r`, `rg`, `find`, `ls -R`) is judged by
everything below it (search.reach_problem).
"""
from __future__ import annotations

import json
import os

from .lexer import (MAX_COMMAND, MAX_QUOTED, QUOTABLE, REV_MARKS, SAFE, Denied, Match, Word,  # noqa: F401
                    _slot_problem, lex)
from .optforms import _BY_PROG, FIND_FLAGS, FIND_VALUED, OPTION_FORMS, OptForm, _Bad, _match_optform  # noqa: F401

TEMPLATES = (
    "./run.sh -m TEXT",
    "./run.sh -m TEXT --queue",
    "./run.sh --wait",
    "git status",
    "nvidia-smi",
    "pwd",
)
SLOTS = ("TEXT", "PATH", "N", "REV")   # the kinds TEMPLATES use


def _show(forms) -> str:
    return ", ".join(f"`{f}`" for f in forms).replace("TEXT", '"<what changed and why>"')


ALLOWED = _show(TEMPLATES[:3]) + "; to look: " + ", ".join(
    f"`{f.usage}`" for f in OPTION_FORMS) + ", `git status`, `pwd`, `nvidia-smi`"
USE_INSTEAD = "read files with the Read tool; search with grep -rn PATTERN FOLDER or find FOLDER -name GLOB"


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
_GIT_READS = {                  # read-only git subcommands outside the language: the form that does it
    "blame": "read the file, and its history with git log -p -- PATH",
    "shortlog": "use git log --oneline -N", "whatchanged": "use git log --stat -N",
}
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
    if names and names[0] == "git" and len(names) > 1 and \
            names[1] not in ("status", "diff", "log", "show", "grep", "ls-files"):
        sub = names[1]
        if sub in _GIT_READS:
            return f"git {sub} is not one of the forms: {_GIT_READS[sub]}"
        if not sub.startswith("-"):
            return GIT_WRITE.format(sub) + ("; there is no network access either" if sub in _GIT_NETWORK else "")
    if names and names[0] in _KNOWN and names[0] not in PROGRAMS:
        return _KNOWN[names[0]].format(names[0])
    if names and (names[0].startswith("python") or tokens[0].endswith("/python")):
        return _KNOWN["python"].format(names[0])
    if " runs only as: " in reason or (tokens and tokens[0] in PROGRAMS):
        return reason
    return f"{reason}. Bash runs only: {ALLOWED}; {USE_INSTEAD}"
