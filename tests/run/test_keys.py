"""run/keys.py: the signing key is found by the project's identity (an id in .git/config), not its path."""
from __future__ import annotations

import json
import stat
import subprocess

import pytest

from autoresearch.record.keys import (dump_export, export_keys, identity, import_keys, key_dir, key_id_of, key_problem,
                                   signing_key)


def repo(path):
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def test_cp_a_keeps_the_identity_and_the_key_a_clone_is_a_new_project(tmp_path):
    a = repo(tmp_path / "a")
    kid, key = signing_key(a)
    assert key_id_of(key) == kid and identity(a).project
    b = tmp_path / "b"
    subprocess.run(["cp", "-a", str(a), str(b)], check=True)
    assert signing_key(b) == (kid, key) and identity(b).project == identity(a).project
    subprocess.run(["git", "-C", str(a), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    c = tmp_path / "c"
    subprocess.run(["git", "clone", "-q", str(a), str(c)], check=True, capture_output=True)
    assert identity(c).project is None and signing_key(c)[0] != kid


def test_another_home_names_the_missing_key_and_never_makes_a_new_one(tmp_path, monkeypatch):
    a = repo(tmp_path / "a")
    kid, _ = signing_key(a)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
    problem = key_problem(a)
    assert problem and kid in problem and "keys import" in problem
    with pytest.raises(Exception, match=kid):
        signing_key(a)
    assert not (tmp_path / "elsewhere" / "autoresearch" / "keys" / identity(a).project).exists()


def test_export_is_0600_and_an_altered_export_is_refused(tmp_path, monkeypatch):
    a = repo(tmp_path / "a")
    kid, key = signing_key(a)
    data = export_keys(a)
    out = tmp_path / "keys.json"
    dump_export(data, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and json.loads(out.read_text())["keys"][kid] == key.hex()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
    bad = {**data, "keys": {kid: "00" * 32}}
    with pytest.raises(ValueError, match="does not match its id"):
        import_keys(a, bad)
    ids, warn = import_keys(a, data)
    assert ids == [kid] and warn is None and signing_key(a) == (kid, key)
    p = key_dir(identity(a)) / f"{kid}.key"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
