"""The `autoresearch` command, for humans: one module per command, named after it.

    app.py        the parser and the dispatch (`autoresearch.cli:main`, `python -m autoresearch`)
    init.py       init: set up an existing repo (wiring.py: the hook settings it merges;
                  plugin.py: `init --plugin`, plugin-only mode)
    status.py     status          plot.py     plot          doctor.py   doctor
    final.py      final           ledger.py   ledger rebuild
    overnight.py  overnight: the driver loop (headless.py: one Claude Code session through
                  claude-agent-sdk and the API errors that end a night; notify.py: the end-of-night
                  message)
    calibrate.py  calibrate       pause.py    pause, resume
    guard explain: autoresearch/guard/explain.py

Each command's module is imported only when that command runs, so `autoresearch guard explain`
does not pay for matplotlib or docker. Nothing else in the package imports the CLI.
"""
from .app import main as main
