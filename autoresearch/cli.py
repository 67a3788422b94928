"""The `autoresearch` command, for humans. Each subcommand imports its module lazily,
so `autoresearch guard explain` does not pay for matplotlib or docker."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="autoresearch", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    # Each module that owns a subcommand adds it here with `add_parser(...)` and
    # `set_defaults(func=...)`, where func(args) -> int imports what it needs.
    _ = sub
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        from . import __version__
        print(__version__)
        return 0
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
