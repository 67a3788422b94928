"""Shared fixtures. Backends a test needs are fixtures: missing locally means skip,
but a group named in AUTORESEARCH_REQUIRE (set by .ci/run) must run, so a skip there fails the session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Run records are signed with a per-project key under $XDG_CONFIG_HOME (autoresearch.record.metrics):
# one throwaway folder for the whole session, so runs fabricated in-process and the hooks run as
# subprocesses (whose HOME differs) agree on the key, and no test writes to the real ~/.config.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="autoresearch-test-config-")
# Stage scratch and the human-only logs live in a state folder outside the project
# (autoresearch.record.flows.state_dir): one per session too, never the real ~/.local/state.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="autoresearch-test-state-")
REQUIRED = set(os.environ.get("AUTORESEARCH_REQUIRE", "").split())
_skipped_required: list[str] = []


def need(group: str, available: bool, why: str) -> None:
    """Skip when a backend is missing, unless CI requires this group: then fail."""
    if available:
        return
    if group in REQUIRED:
        pytest.fail(f"{group} is required here (AUTORESEARCH_REQUIRE) but unavailable: {why}")
    pytest.skip(f"{group} unavailable: {why}")


def pytest_runtest_logreport(report):
    if report.skipped and any(f" {g} " in f" {' '.join(report.keywords)} " for g in REQUIRED):
        _skipped_required.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped_required and session.exitstatus == 0:
        print(f"\nrequired test groups were skipped: {_skipped_required}", file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The prepared default dataset (scripts/bootstrap.sh prepares it)."""
    sys.path.insert(0, str(ROOT))
    import prepare
    return prepare.prepare()


@pytest.fixture(scope="session")
def docker_available() -> None:
    ok = shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0
    need("docker", ok, "no Docker engine answers `docker info`")


@pytest.fixture(scope="session")
def bwrap_available() -> None:
    ok = shutil.which("bwrap") is not None and subprocess.run(
        ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True).returncode == 0
    need("bwrap", ok, "bubblewrap is not installed or cannot create namespaces")


@pytest.fixture(scope="session")
def ray_available() -> None:
    """Ray (the `[ray]` extra, in `test`) and its `ray` CLI beside this Python; required in CI."""
    import importlib.util
    ok = importlib.util.find_spec("ray") is not None and (Path(sys.executable).parent / "ray").is_file()
    need("ray", ok, "Ray is not installed: pip install -e '.[ray]'")


@pytest.fixture(scope="session")
def claude_cli() -> Path:
    """The real Claude Code CLI (the binary in the claude-agent-sdk wheel); required in CI."""
    from e2e.harness import cli_path
    p = cli_path()
    need("claude", p is not None, "the Claude Code CLI bundled in claude-agent-sdk is missing")
    assert p is not None
    return p
