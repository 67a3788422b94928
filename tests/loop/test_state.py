"""state.py on its own, with real files: state.json read and written, a corrupt one moved aside
(kept, not lost) and a fresh state returned, the pause file, measurement runs, calibration, and
the loop lock (one holder at a time)."""
from __future__ import annotations

import json

import pytest
from filelock import Timeout

from autoresearch.loop import state
from autoresearch.loop.state import LoopState, loop_lock, now, read_state, write_state


def test_no_state_file_reads_as_a_fresh_state(tmp_path):
    assert read_state(tmp_path) == LoopState()
    assert not (tmp_path / ".autoresearch").exists()                   # reading creates nothing


def test_written_state_reads_back(tmp_path):
    st = LoopState(started_at=now(), idle_stops=3, measurement_runs=["0002"], branches={"autoresearch/x": "main"})
    write_state(tmp_path, st)
    assert read_state(tmp_path) == st
    assert json.loads(state.state_path(tmp_path).read_text())["idle_stops"] == 3


@pytest.mark.parametrize("junk", [b"{corrupt", b"", b'{"idle_stops": "many"}', b"\xff\xfe"])
def test_a_corrupt_state_is_moved_aside_and_a_fresh_one_returned(tmp_path, junk):
    state.state_dir(tmp_path).mkdir()
    state.state_path(tmp_path).write_bytes(junk)
    assert read_state(tmp_path) == LoopState()
    aside = list(state.state_dir(tmp_path).glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == junk           # kept for the human
    assert not state.state_path(tmp_path).exists()
    write_state(tmp_path, LoopState(idle_stops=1))                     # and the loop goes on
    assert read_state(tmp_path).idle_stops == 1


def test_the_loop_lock_has_one_holder_at_a_time(tmp_path):
    with loop_lock(tmp_path):
        with pytest.raises(Timeout):
            with loop_lock(tmp_path, timeout=0.05):
                pass
    with loop_lock(tmp_path, timeout=0.05):                            # released: free again
        assert (tmp_path / ".autoresearch" / "loop.lock").exists()


def test_pause_file_text_or_json_and_lifting_it(tmp_path):
    assert state.paused(tmp_path) is None
    state.state_dir(tmp_path).mkdir()
    state.pause_path(tmp_path).write_text("going to bed\n")            # a human's plain text
    assert state.paused(tmp_path).reason == "going to bed"
    first, before = state.request_pause(tmp_path, "new reason")
    assert before is not None and first.reason == "going to bed"       # a second pause never replaces the first
    now_p, _ = state.request_pause(tmp_path, "new reason", update=True)
    assert now_p.reason == "new reason" and state.paused(tmp_path).reason == "new reason"
    lifted, st = state.lift_pause(tmp_path, restart_clock=True)
    assert lifted.reason == "new reason" and state.paused(tmp_path) is None and st.started_at is not None
    assert state.lift_pause(tmp_path)[0] is None


def test_measurements_and_calibration(tmp_path):
    state.add_measurement_run(tmp_path, "0003")
    state.add_measurement_run(tmp_path, "0003")
    assert read_state(tmp_path).measurement_runs == ["0003"]
    with pytest.raises(ValueError):
        state.record_calibration(tmp_path, state.Sample([1.0], ["0003"], [1], "sha", 2.0, "fp"))
    cal = state.record_calibration(tmp_path, state.Sample([1.0, 1.2], ["0003", "0004"], [1, 2], "sha", 2.0, "fp"))
    st = read_state(tmp_path)
    assert cal.sigma == pytest.approx(0.1414213, rel=1e-5) and st.sigma == cal.sigma
    assert st.sigma_for("fp") == cal.sigma and st.sigma_for("other") is None
