#!/usr/bin/env python3
"""Claude Code PreCompact hook: finish any half-done decision and snapshot the loop state to
.autoresearch/snapshots/ before the conversation is summarised; a finished run that is not decided
yet is named (systemMessage), so the agent ends its turn before changing anything. Never blocks
compaction."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loop_hook import run  # noqa: E402


def on_error(root, exc, n):
    return {}


if __name__ == "__main__":
    run("PreCompact", "pre_compact_hook", on_error)
