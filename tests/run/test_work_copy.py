"""The writable work copy (issue 16): each stage runs in a fresh copy of the project snapshot, so
legacy code that writes into its own tree works, and nothing it writes reaches the project or the
trusted scorer; the copy counts against sandbox.disk_gb; sandbox.home and sandbox.cache, checked
like mounts, with the cache shared by TRAIN runs and kept from EVAL unless asked for."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiment_support import (BACKENDS, HONEST, git_env, log_of, make_project, metrics, require_backend,
                                run_sh, split_log, with_main_prelude)

from autoresearch.program import ConfigError, load_program, parse_program
from autoresearch.record.layout import eval_log, state_folder

pytestmark = pytest.mark.usefixtures("data_dir")
ALL = BACKENDS + [pytest.param("none", id="none")]

WRITER = '''
import os as _os
_os.makedirs("outputs/2026-01-01/12-00-00", exist_ok=True)
open("outputs/2026-01-01/12-00-00/.hydra.yaml", "w").write("x")
_os.makedirs("out_dir", exist_ok=True)
open("out_dir/ckpt.pt", "wb").write(b"0" * 4096)
_os.makedirs("wandb/run-1/files/deep/new", exist_ok=True)
open("wandb/run-1/files/deep/new/f.txt", "w").write("x")
open("prepare.py", "a").write("\\nraise SystemExit('a tampered prepare.py ran')\\n")
open("program.md", "w").write("---\\nmetric: {name: nope, direction: maximize}\\n---\\n")
open("train.py", "a").write("\\nraise SystemExit('the tampered copy of train.py ran')\\n")
print("WROTE-OWN-TREE", _os.getcwd(), flush=True)
'''


def _tree(proj: Path) -> dict[str, str]:
    """Every file of the project but runs/ and the harness's state, by content (links by target)."""
    out = {}
    for d, dirs, files in os.walk(proj):
        rel = Path(d).relative_to(proj)
        if rel == Path("."):
            dirs[:] = [x for x in dirs if x not in ("runs", ".autoresearch", ".git")]
        for f in files:
            p = Path(d) / f
            out[str(p.relative_to(proj))] = (os.readlink(p) if p.is_symlink()
                                             else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _status(proj: Path) -> list[str]:
    """git status, ignored and untracked files included, less the harness's own runs/ and state."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=proj,
                         capture_output=True, text=True, env=git_env(), check=True).stdout
    return [ln for ln in out.splitlines() if not ln[3:].startswith(("runs/", ".autoresearch/"))]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL)
def test_code_writing_into_its_own_tree_runs_and_the_project_stays_byte_identical(tmp_path, request, backend):
    require_backend(request, backend)
    proj = make_project(tmp_path / "p", train_py=with_main_prelude(HONEST, WRITER), grace_seconds=60)
    (proj / "data-untracked").mkdir()
    (proj / "data-untracked" / "part.txt").write_text("legacy data next to the code")
    tree, status = _tree(proj), _status(proj)
    p = run_sh(proj, "-m", "writes into its own tree", "--backend", backend, "--budget", "3")
    m, log = metrics(proj, "0001"), log_of(proj, "0001")
    assert p.returncode == 0 and m["status"] == "ok", (p.stdout + p.stderr, m, log[-3000:])
    assert 1.5 < m["metric_value"] < 8.5, "the trusted scorer's value, from the project's own prepare.py"
    assert status == [" M train.py", "?? data-untracked/part.txt"], status
    train, _ = split_log(log)
    cwd = train.split("WROTE-OWN-TREE ", 1)[1].split("\n", 1)[0]
    scratch = state_folder(proj) / "runs" / "0001"
    assert cwd.startswith(str(scratch / "work")) and not cwd.startswith(str(proj)), "scratch outside the project"
    assert _tree(proj) == tree and _status(proj) == status, "nothing written in the work copy reached the project"
    assert not scratch.exists() and not (proj / "runs" / "0001" / ".sandbox").exists(), "gone with the run"


UNTRACKED = '''
import os as _os
print("READ-UNTRACKED", open("data-untracked/part.txt").read(), flush=True)
try:
    open("data-untracked/part.txt", "a").write("changed")
    print("WRITE-UNTRACKED OPEN", flush=True)
except OSError as e:
    print("WRITE-UNTRACKED blocked", type(e).__name__, flush=True)
'''


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_untracked_files_are_read_only_links_and_the_disk_cap_counts_the_work_copy(tmp_path, request, backend):
    require_backend(request, backend)
    big = '\nopen("outputs-big.bin", "wb").write(b"1" * (40 << 20))\nimport time as _t\n_t.sleep(30)\n'
    proj = make_project(tmp_path / "p", train_py=with_main_prelude(HONEST, UNTRACKED + big),
                        extra="", grace_seconds=40)
    (proj / "program.md").write_text((proj / "program.md").read_text().replace("disk_gb: 4", "disk_gb: 0.02"))
    (proj / "data-untracked").mkdir()
    (proj / "data-untracked" / "part.txt").write_text("legacy data")
    t0 = time.monotonic()
    run_sh(proj, "-m", "fills the work copy", "--backend", backend, "--budget", "3")
    m, log = metrics(proj, "0001"), log_of(proj, "0001")
    assert m["status"] == "crash" and "disk limit" in m["reason"], (m, log[-2000:])
    assert time.monotonic() - t0 < 30, "killed when the copy passed the cap, not at the budget"
    assert "READ-UNTRACKED legacy data" in log and "WRITE-UNTRACKED blocked" in log, log[-2000:]
    assert (proj / "data-untracked" / "part.txt").read_text() == "legacy data"


# ------------------------------------------------------------------ sandbox.home and sandbox.cache

HOME_CACHE_PROBE = '''
import json as _j, os as _o, sys as _s
def _read(p):
    try:
        return open(p).read().strip()
    except OSError as e:
        return type(e).__name__
def _write(p):
    try:
        open(p, "w").write("x")
        return "written"
    except OSError as e:
        return type(e).__name__
print("HC-PROBE " + _j.dumps({"home": _o.environ.get("HOME"), "xdg": _o.environ.get("XDG_CACHE_HOME"),
      "home_file": _read(_o.environ["PROBE_HOME"] + "/.config/tool.cfg"),
      "home_write": _write(_o.environ["PROBE_HOME"] + "/new.txt"),
      "cache_value": _read(_o.environ["PROBE_CACHE"] + "/value.txt")}), file=_s.stderr, flush=True)
'''
CACHE_WRITER = '''
import os as _os
open(_os.environ["XDG_CACHE_HOME"] + "/value.txt", "w").write(_os.environ["PROBE_TOKEN"])
'''


def _hc(text: str) -> list[dict]:
    return [json.loads(ln.split("HC-PROBE ", 1)[1]) for ln in text.splitlines() if "HC-PROBE " in ln]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cache_outlives_a_run_for_train_and_eval_sees_only_the_read_only_home(tmp_path, request, backend):
    require_backend(request, backend)
    home, cache = tmp_path / "home", tmp_path / "cache"
    (home / ".config").mkdir(parents=True)
    (home / ".config" / "tool.cfg").write_text("tool config")
    cache.mkdir()
    code = with_main_prelude(HONEST, CACHE_WRITER, helpers=HOME_CACHE_PROBE)
    proj = make_project(tmp_path / "p", train_py=code, extra=(
        f"run:\n  env: {{PROBE_HOME: {home}, PROBE_CACHE: {cache}, PROBE_TOKEN: from-run-1}}"))
    text = (proj / "program.md").read_text()
    (proj / "program.md").write_text(text.replace("  gpus: all", f"  gpus: all\n  home: {home}\n  cache: {cache}"))
    assert load_program(proj).sandbox.cache == str(cache)
    for d, _, _ in os.walk(tmp_path):                  # docker as root runs as 65534: it must read HOME
        Path(d).chmod(0o755)
    for n in ("0001", "0002"):
        p = run_sh(proj, "-m", f"run {n}", "--backend", backend, "--budget", "2")
        assert metrics(proj, n)["status"] == "ok", (p.stdout + p.stderr, log_of(proj, n)[-2000:])
    train2 = _hc(split_log(log_of(proj, "0002"))[0])[0]
    assert train2["cache_value"] == "from-run-1", "TRAIN of run 2 reads what run 1 cached"
    assert train2["xdg"] == str(cache) and train2["home"] == str(home)
    assert train2["home_file"] == "tool config" and train2["home_write"] != "written", "HOME is read-only"
    evals = _hc(eval_log(proj, "0002").read_text())
    assert evals and all(e["cache_value"] in ("FileNotFoundError", "PermissionError") and e["xdg"] is None
                         for e in evals), ("EVAL does not see the cache", evals)
    assert all(e["home"] == str(home) and e["home_file"] == "tool config" for e in evals)
    assert not (home / "new.txt").exists()


def _front(body: str) -> str:
    return f"---\n{body}\n---\n"


@pytest.mark.parametrize("body, words", [
    ("sandbox: {home: relative/home}", ["sandbox.home", "absolute path"]),
    ("sandbox: {cache: /nonexistent-autoresearch-cache}", ["sandbox.cache", "does not exist", "mkdir -p"]),
    ("sandbox: {cache: /etc}", ["sandbox.cache", "system folder"]),
    ("sandbox: {home: /usr/../etc}", ["sandbox.home", "without '..'"]),
    ("sandbox: {cache: /etc/hostname}", ["sandbox.cache", "not a folder"]),
])
def test_home_and_cache_are_checked_like_mounts_and_the_error_names_the_fix(body, words):
    with pytest.raises(ConfigError) as e:
        parse_program(_front(body))
    assert all(w in str(e.value) for w in words), str(e.value)


def test_home_or_cache_in_a_credentials_folder_or_the_project_is_refused(tmp_path):
    (tmp_path / ".ssh").mkdir()
    with pytest.raises(ConfigError, match="credentials folder"):
        parse_program(_front(f"sandbox: {{home: {tmp_path / '.ssh'}}}"))
    proj = tmp_path / "p"
    (proj / "cache").mkdir(parents=True)
    (proj / "program.md").write_text(_front(f"sandbox: {{cache: {proj / 'cache'}, home: {tmp_path}}}"))
    msg = str(pytest.raises(ConfigError, load_program, proj).value)
    assert "sandbox.cache" in msg and "inside the project" in msg, msg
    assert "sandbox.home" in msg and "around the project" in msg, msg


def test_a_writable_cache_holding_the_prepared_data_is_refused_with_the_fix(tmp_path, data_dir):
    from autoresearch.run.specs import home_cache
    from autoresearch.sandbox import SandboxUnavailable
    around = data_dir.parent
    prog = parse_program(_front(f"sandbox: {{cache: {around}, cache_eval: true}}"))
    with pytest.raises(SandboxUnavailable, match="holds the prepared data.*name a folder"):
        home_cache(prog, data_dir, "train")
    mounts, env = home_cache(prog, data_dir, "eval")
    assert [m.writable for m in mounts] == [False] and env == {"XDG_CACHE_HOME": str(around)}
    prog = parse_program(_front(f"sandbox: {{home: {around}}}"))
    assert [m.writable for m in home_cache(prog, data_dir, "train")[0]] == [False], "read-only HOME may hold it"


# ------------------------------------------------------------------ what the copy holds, and its cost

def _git(proj: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=proj, env=git_env(), check=True, capture_output=True)


def test_the_copy_holds_the_base_commit_the_snapshot_and_links_to_the_rest(tmp_path):
    from autoresearch.record.layout import Layout
    from autoresearch.run.workcopy import work_copy
    proj = tmp_path / "p"
    (proj / "pkg").mkdir(parents=True)
    (proj / "pkg" / "model.py").write_text("committed model\n")
    (proj / "tool.sh").write_text("#!/bin/sh\n")
    (proj / "tool.sh").chmod(0o755)
    (proj / "conf.yaml").write_text("committed conf\n")
    (proj / "link.yaml").symlink_to("conf.yaml")
    _git(proj, "init", "-q", "-b", "main")
    _git(proj, "add", "-A")
    _git(proj, "commit", "-q", "-m", "base")
    (proj / "conf.yaml").write_text("uncommitted edit\n")
    (proj / "pkg" / "scratch.txt").write_text("untracked\n")
    (proj / ".venv").mkdir()
    (proj / "runs" / "0001").mkdir(parents=True)
    run_dir = proj / "runs" / "0001"
    lay = Layout(proj, run_dir, "train.py", {"pkg/model.py": b"snapshot model\n", "pkg/new.py": b"new\n",
                                              "tool.sh": None})
    (run_dir / "train.py").write_bytes(b"snapshot train\n")
    w = work_copy(lay, "train")
    assert (w / "pkg" / "model.py").read_text() == "snapshot model\n" and (w / "pkg" / "new.py").is_file()
    assert (w / "train.py").read_text() == "snapshot train\n"
    assert (w / "conf.yaml").read_text() == "committed conf\n", "tracked files come from the base commit"
    assert os.readlink(w / "link.yaml") == "conf.yaml" and not (w / "tool.sh").exists()
    assert os.readlink(w / "pkg" / "scratch.txt") == str(proj / "pkg" / "scratch.txt")
    assert os.readlink(w / ".venv") == str(proj / ".venv")
    assert not any((w / n).exists() or (w / n).is_symlink() for n in ("runs", ".git", ".autoresearch"))
    assert (w / "pkg" / "model.py").stat().st_ino != (proj / "pkg" / "model.py").stat().st_ino, "a copy"
    assert w == state_folder(proj) / "runs" / "0001" / "work" / "train", "outside the project, in its state folder"
    assert not (proj / "runs" / "0001" / ".sandbox").exists()
    (w / "pkg" / "model.py").write_text("written in the sandbox")
    assert (proj / "pkg" / "model.py").read_text() == "committed model\n"


def test_a_two_thousand_file_repo_is_copied_whole_and_quickly(tmp_path):
    from autoresearch.record.layout import Layout
    from autoresearch.run.workcopy import work_copy
    proj = tmp_path / "big"
    for i in range(2000):
        f = proj / f"pkg{i % 40}" / f"mod{i}.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"X = {i}\n" * 50)
    _git(proj, "init", "-q", "-b", "main")
    _git(proj, "add", "-A")
    _git(proj, "commit", "-q", "-m", "base")
    (proj / "runs" / "0001").mkdir(parents=True)
    lay = Layout(proj, proj / "runs" / "0001", "train.py", {})
    t0 = time.perf_counter()
    w = work_copy(lay, "train")
    took = time.perf_counter() - t0
    copied = sorted(str(p.relative_to(w)) for p in w.rglob("*.py"))
    assert copied == sorted(str(p.relative_to(proj)) for p in proj.glob("pkg*/*.py"))
    print(f"work copy of 2,000 tracked files: {took:.2f} s")
    assert took < 30, took


def test_doctor_checks_home_and_cache(tmp_path, data_dir, monkeypatch):
    from autoresearch.cli.envcheck import check_home_cache
    monkeypatch.setenv("AUTORESEARCH_DATA", str(data_dir))
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    cache.mkdir()
    prog = parse_program(_front(f"sandbox: {{home: {home}, cache: {cache}}}"))
    got = {c.name: c for c in check_home_cache(tmp_path, prog)}
    assert got["sandbox.home"].level == "ok" and "read-only" in got["sandbox.home"].found
    assert got["sandbox.cache"].level == "ok" and "not shown to EVAL" in got["sandbox.cache"].found
    prog = parse_program(_front(f"sandbox: {{cache: {data_dir.parent}}}"))
    bad = {c.name: c for c in check_home_cache(tmp_path, prog)}["sandbox.cache"]
    assert bad.level == "fail" and "holds the prepared data" in bad.found and bad.fix


REMOVE = """
import os, sys
from pathlib import Path
from autoresearch.run.workcopy import remove_work_copy
root = Path(sys.argv[1])
for d in ("a/b/c", "a/x"):
    (root / d).mkdir(parents=True)
(root / "a/b/c/f").write_text("x")
os.symlink("/etc", root / "a/link")
for d in ("a/b/c", "a/b", "a/x", "a"):
    os.chmod(root / d, 0)
remove_work_copy(root)
print("left" if root.exists() else "gone")
"""


def test_folders_made_unreadable_at_any_depth_do_not_stop_the_cleanup():
    """Agent code chmods 000 nested folders of its work copy. The cleanup (the runner's uid, not
    root: root ignores modes) once raised TypeError there (rmtree's onerror retried os.open without
    flags) and left the tree behind."""
    here = Path(tempfile.mkdtemp(prefix="rt-workcopy-"))        # under /tmp: reachable by the dropped uid
    cmd = [sys.executable, "-c", REMOVE, str(here / "work")]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv to drop root (root ignores chmod 000)")
        here.chmod(0o777)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert p.returncode == 0 and p.stdout.strip() == "gone", p.stdout + p.stderr
    assert Path("/etc").is_dir()
    shutil.rmtree(here, ignore_errors=True)


def _committed(proj: Path, files: dict[str, str]) -> Path:
    """A repository holding `files`, committed."""
    for rel, text in files.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-q", "-m", "base")):
        _git(proj, *args)
    return proj


def test_run_outputs_are_empty_real_folders_in_the_copy_not_links(tmp_path):
    """A stale out/ (untracked, left by a run by hand) is linked read-only, unless run.outputs names
    it: then each copy gets it empty and writable, holding only its tracked files."""
    from autoresearch.record.layout import Layout
    from autoresearch.run.workcopy import work_copy
    proj = _committed(tmp_path / "p", {"outputs/README": "tracked\n"})
    for d in ("out", "outputs/2026-01-01"):
        (proj / d).mkdir(parents=True, exist_ok=True)
        (proj / d / "ckpt.pt").write_text("stale\n")
    run_dir = proj / "runs" / "0001"
    run_dir.mkdir(parents=True)
    w = work_copy(Layout(proj, run_dir, "train.py", {}), "train")
    assert os.readlink(w / "out") == str(proj / "out")
    assert os.readlink(w / "outputs" / "2026-01-01") == str(proj / "outputs" / "2026-01-01")
    w = work_copy(Layout(proj, run_dir, "train.py", {}, outputs=("out", "outputs")), "eval-0")
    assert (w / "out").is_dir() and not (w / "out").is_symlink() and os.listdir(w / "out") == []
    assert sorted(os.listdir(w / "outputs")) == ["README"] and not (w / "outputs" / "README").is_symlink()
    (w / "out" / "ckpt.pt").write_text("new")
    assert (proj / "out" / "ckpt.pt").read_text() == "stale\n"


def test_a_write_into_a_linked_untracked_folder_gets_the_fix_in_the_crash_reason(tmp_path):
    from autoresearch.record.layout import Layout
    from autoresearch.run.workcopy import read_only_hint
    proj = _committed(tmp_path / "p", {"src/m.py": "x\n"})
    (proj / "out").mkdir()
    lay = Layout(proj, proj / "runs" / "0007", "train.py", {})
    work = f"{lay.scratch}/work/train"
    for line in (f"train.py exited with code 1: OSError: [Errno 30] Read-only file system: 'out/ckpt.pt'",
                 f"train.py exited with code 1: PermissionError: [Errno 13] Permission denied: '{work}/out/ckpt.pt'",
                 f"train.py exited with code 1: OSError: [Errno 30] Read-only file system: '{proj}/out/a/b.pt'"):
        hint = read_only_hint(lay, line)
        assert "out/ is an untracked folder" in hint and "run.outputs" in hint, line
    for line in ("train.py exited with code 1: OSError: [Errno 30] Read-only file system: 'src/m.py'",  # tracked
                 "train.py exited with code 1: OSError: [Errno 30] Read-only file system: '/etc/passwd'",
                 "train.py exited with code 1: ValueError: bad 'out/ckpt.pt'",
                 "train.py exited with code 1: OSError: [Errno 30] Read-only file system: 'missing/x'",
                 "train.py exited with code 1: OSError: [Errno 30] Read-only file system: '../../etc/x'"):
        assert read_only_hint(lay, line) == "", line
    listed = Layout(proj, proj / "runs" / "0007", "train.py", {}, outputs=("out",))
    assert read_only_hint(listed, "x: OSError: [Errno 30] Read-only file system: 'out/ckpt.pt'") == ""


STALE_OUT = '''
import os as _os
_os.makedirs("out", exist_ok=True)
open("out/ckpt.pt", "wb").write(b"new checkpoint")
print("WROTE out/ckpt.pt", flush=True)
'''


@pytest.mark.slow
def test_a_stale_untracked_out_folder_crashes_with_the_fix_and_run_outputs_fixes_it(tmp_path, bwrap_available):
    proj = make_project(tmp_path / "p", train_py=with_main_prelude(HONEST, STALE_OUT), grace_seconds=40)
    (proj / "out").mkdir()
    (proj / "out" / "ckpt.pt").write_bytes(b"from a run by hand")
    run_sh(proj, "-m", "stale out/", "--backend", "bwrap", "--budget", "2")
    m = metrics(proj, "0001")
    assert m["status"] == "crash" and "out/ is an untracked folder" in m["reason"], m["reason"]
    text = (proj / "program.md").read_text().replace("\n---\n", "\nrun: {outputs: [out]}\n---\n", 1)
    (proj / "program.md").write_text(text)
    run_sh(proj, "-m", "out/ listed in run.outputs", "--backend", "bwrap", "--budget", "2")
    m = metrics(proj, "0002")
    assert m["status"] == "ok", m["reason"]
    assert "WROTE out/ckpt.pt" in log_of(proj, "0002")
    assert (proj / "out" / "ckpt.pt").read_bytes() == b"from a run by hand"
