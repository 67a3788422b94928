"""Signing keys that belong to the project, not to its path (ARCHITECTURE rule 13).

Identity: a random id kept in the repository's own metadata, `git config --local
autoresearch.project` (.git/config). It travels with `mv`, `cp -a`, a backup and restore, and is
the same under any HOME or `sudo`; the agent cannot write it (the guard denies .git/) and a `git
clone` is a new project (config is not cloned). A folder outside git falls back to a hash of its
real path (the old rule; the loop itself needs git).

Store: `${XDG_CONFIG_HOME:-~/.config}/autoresearch/keys/<project id>/<key id>.key` (32 random
bytes as hex, mode 0600, folders 0700), outside the project, where neither the sandbox nor the
agent can read it. key id = sha256("autoresearch key id" + key)[:16]: it names a key without
revealing it. `git config autoresearch.keyid` names the key new records are signed with, so
under another HOME the missing key is named, never silently replaced.

Every record names the key id that signed it; verification looks that key up by id. A key that
is not here is reported as a missing key with the fix (`autoresearch keys export` there, `keys
import` here), never as tampering. A key lost for good is retired with `autoresearch keys new
--forget <id>` (git config autoresearch.lostkey): runs it signed are then unverifiable crashes.

Records from before key ids name no key: they are checked against every key of the project.
At first use the old per-path key (`keys/<sha256 of the real path>.key`) is adopted as the
project's key, so records made before this change verify as long as the project was not moved
before the upgrade; if it was, they report the missing key (import it, or move the project back
once).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from ..atomic import write_atomic
from .exits import HarnessError

KEY_ENV = "XDG_CONFIG_HOME"
PROJECT_KEY = "autoresearch.project"
KEYID_KEY = "autoresearch.keyid"
LOST_KEY = "autoresearch.lostkey"
CURRENT_FILE = "CURRENT"                 # a path identity's current key id (no git config to hold it)
EXPORT_FORMAT = "autoresearch-keys/1"


class KeyMissing(HarnessError):
    """The key this project signs (or a record was signed) with is not in this HOME; the message says the fix."""


@dataclass
class Identity:
    project: str | None                  # None: no id yet (made on first signing)
    key_id: str | None                   # the key new records are signed with
    config: Path | None                  # the git config file that holds them (None: a path identity)
    lost: list[str] = field(default_factory=list)

    @property
    def is_path(self) -> bool:
        return self.config is None


def store() -> Path:
    return Path(os.environ.get(KEY_ENV) or Path.home() / ".config") / "autoresearch" / "keys"


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"autoresearch key id\0" + key).hexdigest()[:16]


def legacy_key_path(root: Path) -> Path:
    """Where keys lived before key ids: by a hash of the project's real path."""
    return store() / f"{_path_tag(root)}.key"


def _path_tag(root: Path) -> str:
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:32]


# ---------------------------------------------------------------- the project's identity

_cache: dict[str, tuple[tuple, Identity]] = {}


def _config_file(root: Path) -> Path | None:
    dot = Path(root) / ".git"
    if dot.is_dir():
        return dot / "config"
    try:
        p = subprocess.run(["git", "-C", str(root), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                           capture_output=True, text=True, timeout=30,
                           env={**_git_env(), "GIT_CEILING_DIRECTORIES": ""})
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(p.stdout.strip()) / "config" if p.returncode == 0 and p.stdout.strip() else None


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    return env


def _config_get(config: Path, name: str, all_: bool = False) -> list[str]:
    p = subprocess.run(["git", "config", "-f", str(config), "--get-all" if all_ else "--get", name],
                       capture_output=True, text=True, env=_git_env(), timeout=30)
    return [v.strip() for v in p.stdout.splitlines() if v.strip()] if p.returncode == 0 else []


def _config_set(config: Path, name: str, value: str, add: bool = False) -> None:
    p = subprocess.run(["git", "config", "-f", str(config), *(["--add"] if add else []), name, value],
                       capture_output=True, text=True, env=_git_env(), timeout=30)
    if p.returncode != 0:
        full = "No space left" in p.stderr or "Disk quota" in p.stderr or _nearly_full(config.parent)
        raise OSError(errno.ENOSPC if full else errno.EIO, f"cannot record {name} in {config}: {p.stderr.strip()}",
                      str(config))


def _nearly_full(folder: Path) -> bool:
    """git says only "failed to write new configuration file" when the disk is full."""
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def _stamp(p: Path | None) -> tuple:
    try:
        s = p.stat() if p else None
    except OSError:
        return ("gone",)
    return (s.st_mtime_ns, s.st_size, s.st_ino) if s else ("none",)


def identity(root: Path) -> Identity:
    """The project's id and current key id (cached while .git/config is unchanged; by the path as
    given too, so verifying a wave's records does not resolve the path for each)."""
    raw = str(root)
    hit = _cache.get(raw)
    if hit is not None and hit[0] == (_stamp(hit[1].config), _stamp(_current_file(hit[1]))):
        return hit[1]
    root = Path(root).resolve()
    hit = _cache.get(str(root))
    if hit is not None and hit[0] == (_stamp(hit[1].config), _stamp(_current_file(hit[1]))):
        _cache[raw] = hit
        return hit[1]
    config = _config_file(root)
    if config is None:
        pid = f"path-{_path_tag(root)}"
        cur = _current_file(Identity(pid, None, None))
        try:
            kid = cur.read_text().strip() or None if cur else None
        except OSError:
            kid = None
        ident = Identity(pid, kid, None)
    else:
        ident = Identity(next(iter(_config_get(config, PROJECT_KEY)), None),
                         next(iter(_config_get(config, KEYID_KEY)), None), config,
                         _config_get(config, LOST_KEY, all_=True))
    _cache[str(root)] = _cache[raw] = ((_stamp(ident.config), _stamp(_current_file(ident))), ident)
    return ident


def _current_file(ident: Identity) -> Path | None:
    return store() / ident.project / CURRENT_FILE if ident.is_path and ident.project else None


def key_dir(ident: Identity) -> Path:
    return store() / (ident.project or "-")


_keys: dict[str, tuple[tuple, bytes]] = {}     # key file -> (its stamp, the key): one read per process


def _read_key(path: Path) -> bytes | None:
    stamp = _stamp(path)
    hit = _keys.get(str(path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if key_id_of(key) != path.stem:
        return None                                 # a file whose name lies is not that key
    _keys[str(path)] = (stamp, key)
    return key


def find_key(root: Path, key_id: str) -> bytes | None:
    """The key with this id among the project's keys here (None: not in this HOME)."""
    ident = identity(root)
    return _read_key(key_dir(ident) / f"{key_id}.key") if ident.project else None


def project_keys(root: Path) -> dict[str, bytes]:
    """Every key of the project in this HOME (and the old per-path key), by id."""
    ident = identity(root)
    out: dict[str, bytes] = {}
    d = key_dir(ident)
    for p in sorted(d.glob("*.key")) if ident.project and d.is_dir() else []:
        if (k := _read_key(p)) is not None:
            out[p.stem] = k
    try:
        legacy = bytes.fromhex(legacy_key_path(root).read_text().strip())
        out.setdefault(key_id_of(legacy), legacy)
    except (OSError, ValueError):
        pass
    return out


def _write_key(d: Path, key: bytes) -> str:
    kid = key_id_of(key)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in (d.parent, d):
        try:
            os.chmod(folder, 0o700)
        except OSError:
            pass
    path = d / f"{kid}.key"
    if _read_key(path) is None:
        write_atomic(path, key.hex() + "\n", mode=0o600)
    return kid


def _lock() -> FileLock:
    store().mkdir(parents=True, exist_ok=True, mode=0o700)
    return FileLock(str(store() / ".lock"), timeout=60)


def _set_current(root: Path, ident: Identity, kid: str) -> None:
    if ident.config is not None:
        _config_set(ident.config, KEYID_KEY, kid)
    else:
        write_atomic(key_dir(ident) / CURRENT_FILE, kid + "\n", mode=0o600)
    _cache.clear()


def signing_key(root: Path) -> tuple[str, bytes]:
    """(key id, key) that new records are signed with. Made on first use (an id for the project,
    then the old per-path key adopted, else 32 new random bytes). Raises KeyMissing when the
    project already has a key that is not in this HOME: never a silent new one."""
    ident = identity(root)
    if ident.project and ident.key_id:
        key = find_key(root, ident.key_id)
        if key is None:
            raise KeyMissing(missing_key_text(root, ident.key_id, ident))
        return ident.key_id, key
    with _lock():
        _cache.clear()
        ident = identity(root)
        if ident.project and ident.key_id:
            return signing_key(root)
        if not ident.project:
            ident.project = secrets.token_hex(12)
            assert ident.config is not None
            _config_set(ident.config, PROJECT_KEY, ident.project)
        try:
            key = bytes.fromhex(legacy_key_path(root).read_text().strip())
        except (OSError, ValueError):
            key = secrets.token_bytes(32)
        kid = _write_key(key_dir(ident), key)
        _set_current(root, ident, kid)
        return kid, key


def new_key(root: Path, forget: list[str] | None = None) -> str:
    """`autoresearch keys new`: a fresh key signs from now on; `forget`: ids of keys lost for good."""
    signing_key_or_none(root)
    ident = identity(root)
    with _lock():
        kid = _write_key(key_dir(ident), secrets.token_bytes(32))
        _set_current(root, ident, kid)
        for f in forget or []:
            if ident.config is None:
                raise HarnessError("`--forget` needs a git repository (the lost key is recorded in .git/config)")
            if f not in ident.lost:
                _config_set(ident.config, LOST_KEY, f, add=True)
    _cache.clear()
    return kid


def signing_key_or_none(root: Path) -> str | None:
    """The current key id, making the identity if there is none; None when its key is missing here."""
    try:
        return signing_key(root)[0]
    except KeyMissing:
        return None


def key_problem(root: Path) -> str | None:
    """Why no run can be signed here (the project's key is not in this HOME), else None."""
    ident = identity(root)
    if ident.project and ident.key_id and find_key(root, ident.key_id) is None:
        return missing_key_text(root, ident.key_id, ident)
    return None


def is_lost(root: Path, key_id: str) -> bool:
    return key_id in identity(root).lost


def missing_key_text(root: Path, key_id: str, ident: Identity | None = None) -> str:
    ident = ident or identity(root)
    return (f"the signing key {key_id} of this project (id {ident.project}) is not in {key_dir(ident)}, so runs "
            f"signed with it cannot be verified (nothing was altered). If the project was moved or copied from "
            f"another user, HOME or machine, run `autoresearch keys export -o keys.json` there and "
            f"`autoresearch keys import keys.json` here. If the key is lost for good: "
            f"`autoresearch keys new --forget {key_id}` (runs signed with it then count as unverifiable crashes)")


# ---------------------------------------------------------------- export and import

def export_keys(root: Path) -> dict:
    """Every key of the project here, for `keys import` on another machine or user."""
    kid = signing_key_or_none(root)
    ident = identity(root)
    keys = project_keys(root)
    if not keys:
        raise KeyMissing(f"this HOME has no key of project {ident.project}: nothing to export")
    return {"format": EXPORT_FORMAT, "project": ident.project, "current": kid,
            "keys": {k: v.hex() for k, v in keys.items()}}


def import_keys(root: Path, data: dict) -> tuple[list[str], str | None]:
    """Store the exported keys as this project's; (ids imported, a warning or None). Each key is
    checked against its id. The current key is set from the file only when this project has none."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or not isinstance(data.get("keys"), dict):
        raise ValueError(f"not an `autoresearch keys export` file (format {EXPORT_FORMAT})")
    keys: dict[str, bytes] = {}
    for kid, hexkey in data["keys"].items():
        try:
            key = bytes.fromhex(str(hexkey))
        except ValueError:
            raise ValueError(f"key {kid} is not hex") from None
        if key_id_of(key) != kid:
            raise ValueError(f"key {kid} does not match its id (the file was altered)")
        keys[kid] = key
    ident = identity(root)
    with _lock():
        if not ident.project:
            if ident.config is None:
                raise ValueError("not a git repository")
            ident.project = str(data.get("project") or secrets.token_hex(12))
            _config_set(ident.config, PROJECT_KEY, ident.project)
            _cache.clear()
        for key in keys.values():
            _write_key(key_dir(ident), key)
        if not ident.key_id and data.get("current") in keys:
            _set_current(root, ident, str(data["current"]))
    warn = None if data.get("project") == ident.project else \
        f"the keys were exported from project {data.get('project')}; stored as keys of this project ({ident.project})"
    return list(keys), warn


def dump_export(data: dict, path: Path | None) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if path is None:
        print(text, end="")
    else:
        write_atomic(path, text, mode=0o600)
