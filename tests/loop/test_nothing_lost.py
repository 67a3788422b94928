"""Issue 25: nothing kept is ever lost -- full disks, interrupted keeps under a human's commit, moved
projects and missing keys, damaged files. Every test drives the real Stop hook through the command
line in .claude/settings.json (Project.stop), on a real git repository; the full disk is a real tmpfs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from autoresearch.ledger.durable import DECISION_FILE
from autoresearch.record.keys import identity, key_dir, legacy_key_path
from autoresearch.record.metrics import KEY_LOST, KEY_MISSING, RECORD_ALTERED, RunMetrics, _mac, load_verified
from loop_support import Project, clean_env
from test_faults import INLINE, fill, runner, small_disk  # noqa: F401 -- the real tmpfs fixture

CRASH = "AUTORESEARCH_TEST_CRASH_AT"


@pytest.fixture
def proj(tmp_path) -> Project:
    return Project.create(tmp_path / "proj")


def kept_run_ok(p: Project, rid: str) -> None:
    """What `autoresearch final` needs of a kept run: its checkpoint, its verified record, its code."""
    from autoresearch.cli.final import check_identity
    from autoresearch.program import load_program
    row = next(r for r in p.rows() if r.run_id == rid)
    assert row.status == "keep", row
    check_identity(p.path, load_program(p.path), row, rid)


def decision(p: Project, rid: str) -> dict:
    return json.loads((p.path / "runs" / rid / DECISION_FILE).read_text())


# --- a full disk never deletes what may still be kept; a run without its checkpoint is never kept ---

def test_a_full_disk_spares_an_undecided_checkpoint_which_is_kept_once_space_is_freed(small_disk):
    p = Project.create(small_disk / "proj")
    p.baseline(2.0)
    p.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = p.fake_run(value=1.5)                      # finished, better, not decided yet
    p.note("noted")
    fill(small_disk)
    r = p.stop()
    assert not r.blocked and "disk is full" in r.text, r
    assert (p.path / "runs" / rid / "out" / "model.pt").read_bytes() == f"weights of {rid}".encode()
    (small_disk / "filler").unlink()                 # a human frees space
    r = p.stop()
    assert r.blocked and "KEPT" in r.text, r.text
    kept_run_ok(p, rid)


def test_a_run_whose_checkpoint_is_missing_is_never_kept_and_says_so(proj):
    proj.baseline(2.0)
    head = proj.rev()
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.5)
    shutil.rmtree(proj.path / "runs" / rid / "out")  # deleted before the decision
    r = proj.decide()
    assert r.blocked and "NOT kept" in r.text and f"runs/{rid}/out/model.pt" in r.text and "Run it again" in r.text
    row = proj.rows()[-1]
    assert row.status == "discard" and "checkpoint missing" in row.note and decision(proj, rid)["status"] == "discard"
    assert proj.rev() == head and "N_EMBD = 96" in proj.read()       # no commit; the code stays to run again
    again = proj.fake_run(value=1.5)
    r = proj.decide()
    assert "KEPT" in r.text, r.text
    kept_run_ok(proj, again)


# --- a full disk never loops ------------------------------------------------------------------------

def narrow_win(p: Project) -> str:
    p.baseline(2.0)
    p.edit("N_EMBD = 64", "N_EMBD = 96")
    p.fake_run(value=1.975)                          # beats 2.0 by 0.025: within threshold + confirm_margin
    r = p.decide()
    assert r.blocked and "Confirm it" in r.text, r.text
    return r.text


def test_a_pending_confirm_with_too_little_free_space_lets_the_stop_through(proj):
    narrow_win(proj)
    proj.note("tried to confirm")
    r = proj.stop(env={"AUTORESEARCH_MIN_FREE_MB": str(10**9)})    # more than any disk has: "full"
    assert not r.blocked and "disk is full" in r.text and "human" in r.text and "Confirm it" in r.text, r
    r = proj.stop()                                                # space again: the loop goes on
    assert r.blocked and "Confirm it" in r.text


def test_run_sh_hitting_enospc_lets_the_next_stop_through_once(small_disk):
    p = Project.create(small_disk / "proj", program=INLINE)
    narrow_win(p)
    fill(small_disk)
    r = runner(p, "confirm")
    out, err = r.communicate(timeout=120)
    assert r.returncode == 74, (out, err)                          # it told the Stop hook
    (small_disk / "filler").unlink()                               # even with room again, the hook was told
    r = p.stop()
    assert not r.blocked and "found the disk full (ENOSPC" in r.text and "human" in r.text, r
    assert p.stop().blocked                                        # once: then the loop goes on


# --- an interrupted keep, then a commit made from the stale index ------------------------------------

def test_a_commit_from_the_stale_index_after_an_interrupted_keep_is_found_explained_and_restored(proj):
    proj.baseline(2.0)
    base_train = proj.committed("train.py")
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    kept_code = proj.read()
    rid = proj.fake_run(value=1.5)
    proj.note("better")
    r = proj.stop(env={CRASH: "commit"})                          # the branch moved; the index did not
    assert r.reply is None or not r.reply
    (proj.path / "HUMAN.txt").write_text("a human's file\n")
    proj.sh("git", "add", "HUMAN.txt")
    proj.sh("git", "commit", "-q", "-m", "a human's commit")       # the whole (stale) index
    assert proj.committed("train.py") == base_train                 # the tip lost the kept code
    r = proj.stop()
    assert r.blocked and "KEPT" in r.text and "stale git index" in r.text, r.text
    row = proj.rows()[-1]
    assert row.status == "keep" and row.run_id == rid and decision(proj, rid)["status"] == "keep"
    assert proj.committed("train.py") == kept_code.strip() and proj.committed("HUMAN.txt") == "a human's file"
    assert proj.git("log", "-1", "--format=%h", row.commit) and proj.git("cat-file", "-t", row.commit) == "commit"
    assert proj.read() == kept_code and not [d for d in proj.dirty() if "train.py" in d], proj.dirty()
    kept_run_ok(proj, rid)
    # a run of the kept code now re-measures the kept value, never the old code's
    proj.fake_run(value=1.52)
    r = proj.decide()
    assert "RE-MEASURED" in r.text and "1.510000" in r.text, r.text


# --- keys belong to the project, not its path -------------------------------------------------------

def test_a_moved_project_verifies_its_records_and_decides_on(proj, tmp_path):
    proj.baseline(2.0)
    moved = Project(tmp_path / "elsewhere" / "proj")
    moved.path.parent.mkdir()
    shutil.move(str(proj.path), moved.path)                          # mv (the .venv link is absolute)
    m, problem = load_verified(moved.path / "runs" / "0001")
    assert problem is None and m is not None and m.key_id
    moved.edit("N_EMBD = 64", "N_EMBD = 96")
    moved.fake_run(value=1.5)
    r = moved.decide()
    assert "KEPT" in r.text, r.text


def test_another_home_without_the_key_names_the_missing_key_and_decides_nothing(proj, tmp_path, monkeypatch):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.5)
    kid = RunMetrics.read(proj.path / "runs" / rid).key_id
    export = proj.sh(sys.executable, "-m", "autoresearch", "keys", "export",
                     env={"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]})
    other = {"XDG_CONFIG_HOME": str(tmp_path / "other-home" / ".config")}
    proj.note("better")
    r = proj.stop(env=other)
    assert not r.blocked and f"signing key {kid}" in r.text and "is not in" in r.text and "keys import" in r.text, r
    assert RECORD_ALTERED not in r.text and "altered" not in r.text.replace("nothing was altered", "")
    assert [x.run_id for x in proj.rows()] == ["0001"]             # nothing decided, nothing recorded as a crash
    imp = subprocess.run([sys.executable, "-m", "autoresearch", "keys", "import", "-"], cwd=proj.path, input=export,
                         env={**clean_env(), **other}, capture_output=True, text=True)
    assert imp.returncode == 0 and kid in imp.stdout, imp.stderr
    r = proj.stop(env=other)
    assert r.blocked and "KEPT" in r.text, r.text


def test_a_replaced_key_is_a_missing_key_and_run_sh_refuses_to_sign_with_a_new_one(proj, tmp_path):
    proj.baseline(2.0)
    ident = identity(proj.path)
    path = key_dir(ident) / f"{ident.key_id}.key"
    path.write_text(os.urandom(32).hex() + "\n")                   # someone replaced the key file
    m, problem = load_verified(proj.path / "runs" / "0001")
    assert m is None and problem.startswith(KEY_MISSING), problem
    r = subprocess.run([str(proj.path / ".venv" / "bin" / "python"), "-m", "autoresearch.run", "-m", "x"],
                       cwd=proj.path, env=clean_env(CLAUDE_PROJECT_DIR=str(proj.path), HOME=str(proj.path.parent)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and ident.key_id in r.stderr and "keys import" in r.stderr, r.stderr
    assert not (proj.path / "runs" / "0002").exists()
    proj.note("x")
    r = proj.stop()
    assert not r.blocked and ident.key_id in r.text


def test_a_key_lost_for_good_is_retired_and_its_undecided_runs_become_unverifiable_crashes(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.5)
    ident = identity(proj.path)
    shutil.rmtree(key_dir(ident))                                  # the key is gone for good
    r = proj.sh(sys.executable, "-m", "autoresearch", "keys", "new", "--forget", ident.key_id,
                env={"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]})
    assert "new signing key" in r
    r = proj.decide()
    assert r.blocked and "CRASHED" in r.text and KEY_LOST in r.text, r.text
    row = proj.rows()[-1]
    assert (row.run_id, row.status) == (rid, "crash") and RECORD_ALTERED not in row.note
    assert proj.rows()[0].status == "keep"                        # a decision already made never changes


def test_a_record_from_before_key_ids_verifies_with_the_adopted_per_path_key(tmp_path):
    p = Project.create(tmp_path / "old")
    legacy = legacy_key_path(p.path)
    legacy.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    legacy.write_text(key.hex() + "\n")
    rid = p.fake_run(value=2.0, metrics=None)
    from datetime import datetime, timezone
    m = RunMetrics(run_id=rid, status="ok", metric_name="val_bpb", metric_value=2.0, direction="minimize",
                   train_py_sha256=p.sha(), seed=1, budget_seconds=2, grace_seconds=5, sandbox="none",
                   started_at=datetime.now(timezone.utc), finished_at=datetime.now(timezone.utc))
    body = m.model_dump(mode="json", exclude={"signature", "key_id"})   # the old format: no key_id
    body["signature"] = _mac(key, body)
    (p.path / "runs" / rid / "metrics.json").write_text(json.dumps(body))
    got, problem = load_verified(p.path / "runs" / rid)
    assert problem is None and got is not None and got.key_id is None
    p.fake_run(value=1.9)                                          # a new run: signed with the adopted key, by id
    assert RunMetrics.read(p.path / "runs" / f"{int(rid) + 1:04d}").key_id == identity(p.path).key_id


# --- damaged files are set aside, never fatal --------------------------------------------------------

def test_a_results_tsv_that_is_not_utf8_is_set_aside_by_status_rebuild_and_the_stop_hook(proj):
    proj.baseline(2.0)
    (proj.path / "results.tsv").write_bytes(b"commit\tval_bpb\n\xff\xfe broken \x80\n")
    st = subprocess.run([sys.executable, "-m", "autoresearch", "status"], cwd=proj.path, env=clean_env(),
                        capture_output=True, text=True)
    assert st.returncode == 2 and "not UTF-8" in st.stderr and "ledger rebuild" in st.stderr, st.stderr
    assert "Traceback" not in st.stderr
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.5)
    r = proj.decide()
    assert r.blocked and "rebuilt results.tsv" in r.text and "KEPT" in r.text, r.text
    assert [x.status for x in proj.rows()] == ["keep", "keep"]
    assert list(proj.path.glob("results.tsv.corrupt-*"))


def test_a_corrupt_journal_is_set_aside_with_a_notice_and_the_loop_goes_on(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.5)
    pending = proj.path / ".autoresearch" / "pending"
    pending.mkdir(parents=True)
    (pending / "journal.json").write_bytes(b'{"action": "keep", "created_at": "20\xff')
    r = proj.decide()
    assert r.blocked and "journal" in r.text and "pending.corrupt-" in r.text and "KEPT" in r.text, r.text
    assert proj.rows()[-1].run_id == rid and not pending.exists()
    assert list((proj.path / ".autoresearch").glob("pending.corrupt-*"))


def test_a_journal_truncated_after_the_commit_keeps_the_keep_and_syncs_the_index(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.5)
    proj.note("better")
    proj.stop(env={CRASH: "commit"})
    j = proj.path / ".autoresearch" / "pending" / "journal.json"
    j.write_bytes(j.read_bytes()[:40])                              # truncated
    r = proj.stop()
    assert r.blocked and "journal" in r.text, r.text
    row = next(x for x in proj.rows() if x.run_id == rid)
    assert row.status == "keep" and decision(proj, rid)["status"] == "keep"
    assert not proj.dirty(), proj.dirty()                           # the index learnt the kept blobs
    kept_run_ok(proj, rid)


def test_a_decision_file_damaged_after_it_was_checked_is_still_set_aside_and_written_again(proj):
    """ensure() parses only the decision.json files that changed since they last parsed (stamps in
    .autoresearch/): one truncated after a Stop checked it changed, so the next Stop finds it."""
    proj.baseline(2.0)
    proj.stop()                                                     # checked: its stamp is recorded
    assert "0001" in json.loads((proj.path / ".autoresearch" / "decision-stamps.json").read_text())
    f = proj.path / "runs" / "0001" / DECISION_FILE
    f.write_bytes(f.read_bytes()[:40])
    proj.stop()
    assert decision(proj, "0001")["status"] == "keep"
    assert list((proj.path / "runs" / "0001").glob(f"{DECISION_FILE}.corrupt-*"))


def test_a_corrupt_state_and_a_truncated_decision_file_are_set_aside_and_said(proj):
    proj.baseline(2.0)
    (proj.path / ".autoresearch" / "state.json").write_bytes(b"\x00\xff{")
    (proj.path / "runs" / "0001" / DECISION_FILE).write_text('{"commit": "ab')
    (proj.path / "results.tsv").unlink()                            # and the ledger is rebuilt from them
    r = proj.stop()
    assert r.blocked and "state.json could not be read" in r.text, r.text
    assert [x.status for x in proj.rows()] == ["keep"] and decision(proj, "0001")["status"] == "keep"
    assert list((proj.path / "runs" / "0001").glob(f"{DECISION_FILE}.corrupt-*"))
