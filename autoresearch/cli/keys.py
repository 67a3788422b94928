"""`autoresearch keys`: the project's signing keys (run/keys.py). They belong to the project's identity
(an id in .git/config), so `mv` and `cp -a` keep working; another user, HOME or machine needs them
moved: `keys export -o FILE` there, `keys import FILE` here. `keys new` starts a fresh key when the
old one is lost for good (`--forget ID`: the runs it signed count as unverifiable crashes)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def show(root: Path) -> int:
    from ..record import key_identity as identity, key_dir, key_problem, project_keys
    from ..record import run_ids
    from ..record import KEY_MISSING, load_verified
    ident = identity(root)
    if not ident.project:
        print("no signing key yet: the first ./run.sh makes one")
        return 0
    have = project_keys(root)
    print(f"project id   {ident.project}" + ("  (a folder outside git: by its path)" if ident.is_path else ""))
    print(f"signs with   {ident.key_id or '-'}" + ("" if ident.key_id in have else "  (NOT in this HOME)"))
    print(f"keys here    {', '.join(have) or 'none'}  ({key_dir(ident)})")
    if ident.lost:
        print(f"retired      {', '.join(ident.lost)} (lost: their runs are unverifiable)")
    missing = [rid for rid in run_ids(root)
               if (p := load_verified(root / "runs" / rid)[1]) and p.startswith(KEY_MISSING)]
    if missing:
        print(f"{len(missing)} run(s) signed with a key that is not here: {', '.join(missing[:20])}")
    if problem := key_problem(root) or (missing and load_verified(root / "runs" / missing[-1])[1]):
        print(problem, file=sys.stderr)
        return 1
    return 0


def export(root: Path, output: str | None) -> int:
    from ..record import dump_export, export_keys
    data = export_keys(root)
    dump_export(data, Path(output) if output and output != "-" else None)
    if output and output != "-":
        print(f"wrote {len(data['keys'])} key(s) of project {data['project']} to {output} (mode 0600; it is a "
              f"secret: whoever has it can sign results). On the other side: autoresearch keys import {output}",
              file=sys.stderr)
    return 0


def import_(root: Path, source: str) -> int:
    from ..record import import_keys
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        ids, warn = import_keys(root, json.loads(text))
    except (OSError, ValueError) as e:
        print(f"autoresearch keys import: {e}", file=sys.stderr)
        return 2
    if warn:
        print(f"note: {warn}", file=sys.stderr)
    print(f"imported {len(ids)} key(s): {', '.join(ids)}")
    return 0


def new(root: Path, forget: list[str]) -> int:
    from ..record import new_key
    kid = new_key(root, forget)
    print(f"new signing key {kid}: runs from now on are signed with it"
          + (f"; retired as lost: {', '.join(forget)}" if forget else ""))
    return 0
