"""Fixtures for the end-to-end scenarios: the real CLI, a fresh project copy, the fake API."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need
from e2e.fake_api import FakeAPI
from e2e.harness import ROOT, Project, make_project


def _stamp_current(root: Path) -> bool:
    """bootstrap.sh's stamp is current (so run.sh will not reinstall); bootstrap.sh says what it must be."""
    stamp = root / ".venv" / ".autoresearch-installed"
    want = subprocess.run([str(root / "scripts" / "bootstrap.sh"), "--stamp"], capture_output=True,
                          text=True).stdout.strip()
    return stamp.is_file() and stamp.read_text().strip() == want


@pytest.fixture(scope="session")
def bootstrapped() -> None:
    """The shared .venv is bootstrapped for the current pyproject (./test.sh does this first,
    so in CI it is free). Project copies symlink that .venv; if its stamp were stale, the
    copy's run.sh would reinstall the package from a temporary folder into the shared venv."""
    if not _stamp_current(ROOT):
        subprocess.run([str(ROOT / "scripts" / "bootstrap.sh")], check=True)
    assert _stamp_current(ROOT), "scripts/bootstrap.sh did not leave a current stamp in .venv"


@pytest.fixture(scope="session")
def sandbox() -> str:
    """Scenarios that run experiments need a sandbox backend (program.md says `auto`)."""
    import shutil
    docker = shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0
    bwrap = shutil.which("bwrap") is not None and subprocess.run(
        ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True).returncode == 0
    need("bwrap", docker or bwrap, "experiments need a sandbox: neither Docker nor bubblewrap works here")
    return "docker" if docker else "bwrap"


@pytest.fixture
def project(tmp_path: Path, claude_cli: Path, bootstrapped: None) -> Project:
    """A committed copy of the current working tree, with its own HOME."""
    proj = make_project(tmp_path)
    assert _stamp_current(proj.root), "the project copy's pyproject differs from the bootstrapped one"
    return proj


@pytest.fixture
def fake(project: Project) -> Iterator[FakeAPI]:
    """The scripted model; tests set `fake.script` before running the CLI."""
    with FakeAPI(project=str(project.root)) as api:
        yield api
