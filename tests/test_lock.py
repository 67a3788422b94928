"""The locks (scripts/*.lock, made by scripts/lock.py): what a clean machine installs is what CI
tested. They match their inputs, pin everything with hashes, satisfy pyproject's ranges, agree
with each other, and the .venv this suite runs in was installed from them."""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402  (scripts/lock.py: stdlib only)

LOCKS = [ROOT / "scripts" / name for name in lock.LOCKS]


def entries(path: Path) -> list[tuple[str, str, str | None, list[str]]]:
    """(name, version, marker, hashes) for each requirement of a lock file."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        if not line or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*(?:;\s*(.*?))?\s*((?:--hash=\S+\s*)+)$", line)
        assert m, f"{path.name}: a line that is not name==version [; marker] --hash=...: {line[:120]}"
        out.append((lock._norm(m.group(1)), m.group(2), m.group(3), re.findall(r"--hash=sha256:(\w{64})", m.group(4))))
    return out


def applies(marker: str | None) -> bool:
    return marker is None or Marker(marker).evaluate()


def test_every_lock_matches_its_inputs():
    assert lock.check() == [], "a lock is stale: run `python3 scripts/lock.py` and commit the result"


def test_torch_requirements_in_the_lock_inputs_are_the_installed_torch_s():
    """bootstrap.sh installs torch outside the lock; its own requirements are locked from this list."""
    want = sorted(r for r in (md.requires("torch") or []) if "extra ==" not in r)
    assert sorted(lock.TORCH_REQUIRES) == want, "torch changed: update lock.TORCH_REQUIRES and re-lock"


@pytest.mark.parametrize("path", LOCKS, ids=lambda p: p.name)
def test_every_pin_is_exact_and_hash_checked(path):
    got = entries(path)
    assert got, path
    for name, version, _, hashes in got:
        assert hashes, f"{path.name}: {name}=={version} has no hash"
    assert "torch" not in {n for n, *_ in got}, "torch is installed by bootstrap.sh, never from the lock"


def test_the_main_lock_satisfies_pyproject_and_holds_everything_ci_installs():
    pinned: dict[str, list[str]] = {}
    for name, version, marker, _ in entries(ROOT / "scripts" / "requirements.lock"):
        if applies(marker):
            pinned.setdefault(name, []).append(version)
    for spec in lock.project_inputs():
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate():
            continue
        name = lock._norm(req.name)
        assert name in pinned, f"{spec} is not in scripts/requirements.lock"
        assert len(pinned[name]) == 1 and req.specifier.contains(pinned[name][0], prereleases=True), \
            f"{spec}: locked {pinned[name]}"


def test_the_plugin_locks_agree_with_the_main_lock():
    main = {(n, m): v for n, v, m, _ in entries(ROOT / "scripts" / "requirements.lock")}
    for name in ("plugin-requirements.lock", "plugin-plot.lock"):
        for n, v, m, _ in entries(ROOT / "scripts" / name):
            if (n, m) in main:
                assert main[(n, m)] == v, f"{name} pins {n}=={v}, the main lock {main[(n, m)]}"
    plot = {n for n, *_ in entries(ROOT / "scripts" / "plugin-plot.lock")}
    base = {n for n, *_ in entries(ROOT / "scripts" / "plugin-requirements.lock")}
    assert "matplotlib" in plot and "matplotlib" not in base and base <= plot


def test_this_venv_was_installed_from_the_lock():
    """What CI tests is exactly what the lock says (bootstrap.sh installs it with --require-hashes)."""
    wrong = []
    for name, version, marker, _ in entries(ROOT / "scripts" / "requirements.lock"):
        if not applies(marker):
            continue
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have != version:
            wrong.append(f"{name}: installed {have}, locked {version}")
    assert not wrong, "the .venv differs from scripts/requirements.lock (run scripts/bootstrap.sh):\n" + "\n".join(wrong)


def test_bootstrap_and_plugin_install_use_the_locks_with_hashes():
    boot = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert '--require-hashes --no-deps -r "$root/scripts/requirements.lock"' in boot
    assert "scripts/requirements.lock" in boot.split("want=", 1)[1].split("\n", 1)[0], "the stamp must cover the lock"
    deps = (ROOT / "scripts" / "plugin-deps.sh").read_text()
    assert "plugin-requirements.lock" in deps and deps.count("--require-hashes") >= 2
    assert "install --disable-pip-version-check -q \"matplotlib" not in deps


def test_the_locks_name_no_machine_path():
    """A lock made on one machine is the same text on another: no temporary or home folder in it."""
    for path in LOCKS:
        text = path.read_text()
        assert not re.search(r"(^|\s)(/tmp/|/work/|/home/|/root/)", text), path.name
