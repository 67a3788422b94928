"""PreToolUse hook: the guard's entry point (decisions live in autoresearch/guard/: respond.py first).

Wired in .claude/settings.json as

    .venv/bin/python -I -S hooks/pre_tool_use.py

behind a shell wrapper that turns every failure into a block (exit 2). -I -S
skips the site module and .pth processing (about half of a bare interpreter's
start-up), so the code's folder and the virtualenv's site-packages are put on
sys.path by hand. Fail-closed inside too: any exception, or a decision that
takes longer than ALARM seconds, exits 2 with the reason on stderr.
"""
import sys

ALARM = 5   # seconds; the wrapper kills the process at 10 and Claude Code's own limit is 30


class GuardTimeout(BaseException):
    """Not an Exception (nor an OSError, as TimeoutError is), so no handler on the way can swallow it."""


def _timeout(signum, frame):
    raise GuardTimeout(f"the guard took longer than {ALARM} s")


def main() -> None:
    import _signal                       # the C module; `signal` imports enum (~5 ms)
    _signal.signal(_signal.SIGALRM, _timeout)
    _signal.alarm(ALARM)
    import os
    code = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.dirname(os.path.dirname(sys.executable))
    sys.path[:0] = [code, f"{venv}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"]
    from autoresearch.guard import hook
    out = hook(sys.stdin.buffer.read())
    _signal.alarm(0)
    sys.stdout.write(out + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:           # SystemExit and KeyboardInterrupt included: all mean deny
        sys.stderr.write(f"autoresearch guard failed, so this call is denied: {type(e).__name__}: {e}\n")
        sys.stderr.flush()
        raise SystemExit(2)
