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
    _operator_commands(sub)
    return ap


# --- operator commands: init, status, plot, doctor, final, overnight ------------------------

def _project(args: argparse.Namespace):
    """The project folder: --project, else $CLAUDE_PROJECT_DIR, else the nearest program.md upwards."""
    from pathlib import Path

    from .config import project_root
    return Path(args.project).resolve() if getattr(args, "project", None) else project_root()


def _friendly(fn):
    """Turn the errors a human can fix (bad program.md, bad ledger, bad input) into one clear line."""
    def run(args: argparse.Namespace) -> int:
        from .config import ConfigError
        from .ledger import LedgerError
        try:
            return int(fn(args) or 0)
        except (ConfigError, LedgerError) as e:
            print(f"autoresearch {args.command}: {e}", file=sys.stderr)
            return 2
    return run


def _operator_commands(sub) -> None:
    def add(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--project", "-C", metavar="DIR", help="the project folder (default: found from here)")
        p.set_defaults(func=_friendly(func))
        return p

    def status(a):
        from .status import main as run
        return run(_project(a), branch=a.branch, show_all=a.all)
    p = add("status", "a table of the experiments: the best, the phase, budget left, noise sigma", status)
    p.add_argument("--branch", help="the run branch to show (default: the current or latest one)")
    p.add_argument("--all", action="store_true", help="every row, not just the last 20")

    def plot(a):
        from pathlib import Path

        from .plot import main as run
        return run(_project(a), out=Path(a.out) if a.out else None, branch=a.branch)
    p = add("plot", "draw progress.png: every experiment, the kept ones, the running best", plot)
    p.add_argument("--out", "-o", metavar="PNG", help="where to write (default: progress.png in the project)")
    p.add_argument("--branch", help="the run branch to draw (default: the current or latest one)")


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
