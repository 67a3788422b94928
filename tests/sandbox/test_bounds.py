"""The bounds every backend shares (autoresearch/sandbox/bounds.py), on real files: the log keeps
its head as written and its tail at close, with a marker saying how much was cut; captured stdout
stops at its limit; the disk watch kills once the writable mounts hold too much."""
from __future__ import annotations

import io
import threading
import time

from autoresearch.sandbox.bounds import _Capture, _disk_usage, _DiskWatch, _LogSink, _StartClock
from autoresearch.sandbox.spec import Mount, SandboxSpec

CHUNKS = [f"{i:03d}-------\n".encode() for i in range(30)]     # 30 lines of 11 bytes


def test_the_log_keeps_head_and_tail_and_says_what_was_cut(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"earlier stage\n")
    sink = _LogSink(log, 110)
    for c in CHUNKS:
        sink.write(c)
    head = b"".join(CHUNKS)[:55]
    assert log.read_bytes() == b"earlier stage\n" + head      # written as it came: a killed run keeps it
    assert sink.close() == 330 - 110
    text = log.read_bytes()
    tail = b"".join(CHUNKS)[-55:]
    assert text.startswith(b"earlier stage\n" + head + b"\n[... autoresearch: 220 bytes of output cut here")
    assert text.endswith(b" ...]\n" + tail)


def test_a_log_under_its_limit_is_written_whole_without_a_marker(tmp_path):
    log = tmp_path / "train.log"
    sink = _LogSink(log, 1000)
    sink.drain(io.BufferedReader(io.BytesIO(b"".join(CHUNKS))))
    assert sink.close() == 0
    assert log.read_bytes() == b"".join(CHUNKS)


def test_captured_stdout_stops_at_its_limit_or_keeps_its_tail():
    cap = _Capture(25)
    for c in CHUNKS[:3]:
        cap.add(c)
    assert bytes(cap.buf) == b"".join(CHUNKS[:3])[:25] and cap.truncated
    tail = _Capture(25, keep_tail=True)
    for c in CHUNKS:
        tail.add(c)
    assert bytes(tail.buf) == b"".join(CHUNKS)[-25:] and not tail.truncated


def test_disk_usage_counts_blocks_and_too_many_files_is_over_any_limit(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100_000)
    assert 100_000 <= _disk_usage([tmp_path]) < 200_000
    for i in range(20):
        (tmp_path / f"e{i}").touch()
    assert _disk_usage([tmp_path], max_entries=10) == 1 << 62


def test_the_disk_watch_kills_once_the_writable_mounts_hold_too_much(tmp_path):
    out, ro = tmp_path / "out", tmp_path / "ro"
    out.mkdir()
    ro.mkdir()
    (ro / "big").write_bytes(b"x" * 1_000_000)               # read-only mounts do not count
    spec = SandboxSpec(argv=["true"], mounts=[Mount(ro, str(ro)), Mount(out, str(out), writable=True)],
                       env={}, cwd="/tmp", timeout_s=1, memory_bytes=1 << 20, disk_bytes=500_000)
    killed = threading.Event()
    with _DiskWatch(spec, kill=killed.set) as watch:
        time.sleep(0.2)
        assert not killed.is_set() and not watch.over()
        (out / "big").write_bytes(b"x" * 1_000_000)
        assert killed.wait(5)
    assert watch.exceeded and watch.over()


def test_the_disk_watch_polls_as_often_as_the_headroom_needs(tmp_path):
    """Far from the limit a poll a second is enough (walking a work copy 20 times a second took
    CPU from the training); near it, every 50 ms, so what passes the limit is what a writer puts
    there in 50 ms, as before."""
    out = tmp_path / "out"
    out.mkdir()
    spec = SandboxSpec(argv=["true"], mounts=[Mount(out, str(out), writable=True)],
                       env={}, cwd="/tmp", timeout_s=1, memory_bytes=1 << 20, disk_bytes=64 << 30)
    w = _DiskWatch(spec, kill=lambda: None)
    assert w.next_wait(0, 10) > 0.95
    assert w.next_wait((64 << 30) - (100 << 20), 10) == w.INTERVAL_S           # 100 MB left
    assert w.next_wait(0, w.MAX_ENTRIES - 1000) == w.INTERVAL_S                # 1,000 files left
    half = (64 << 30) - w.WRITE_BPS // 2                                       # half a second left
    assert abs(w.next_wait(half, 10) - 0.5) < 1e-6
    with w:
        time.sleep(1.6)
    assert 1 <= w.polls <= 3, w.polls


def _one_writable(tmp_path, disk_bytes: int):
    """A spec whose only writable mount is tmp_path/out, capped at disk_bytes."""
    out = tmp_path / "out"
    out.mkdir()
    return out, SandboxSpec(argv=["true"], mounts=[Mount(out, str(out), writable=True)], env={}, cwd="/tmp",
                            timeout_s=1, memory_bytes=1 << 20, disk_bytes=disk_bytes)

def test_the_disk_watch_walks_from_the_start_marker_on_and_at_once(tmp_path):
    """Behind a trusted start-up (TRAIN, a model server waiting out TRAIN) nothing of the agent's
    runs before the marker, so no walk is spent on it; what is there when the marker comes is
    walked at once, and a limit already passed kills at once."""
    out, spec = _one_writable(tmp_path, 500_000)
    clock, killed = _StartClock(b"[GO]"), threading.Event()
    with _DiskWatch(spec, kill=killed.set, clock=clock) as watch:
        (out / "big").write_bytes(b"x" * 1_000_000)
        time.sleep(0.4)
        assert watch.polls == 0 and not killed.is_set(), "walked before agent code could run"
        t0 = time.monotonic()
        clock.feed(b"warm-up done\n[GO]\n")
        assert killed.wait(5)
        assert time.monotonic() - t0 < 0.3, "the first walk waited for the pacing, not the marker"
    assert watch.exceeded and watch.polls == 1


def test_a_disk_watch_whose_marker_never_comes_ends_without_a_walk(tmp_path):
    _, spec = _one_writable(tmp_path, 500_000)
    t0 = time.monotonic()
    with _DiskWatch(spec, kill=lambda: None, clock=_StartClock(b"[GO]")) as watch:
        time.sleep(0.2)
    assert watch.polls == 0 and time.monotonic() - t0 < 1.0
    with _DiskWatch(spec, kill=lambda: None, clock=_StartClock(None)) as plain:  # no marker: walks from the start
        time.sleep(0.2)
    assert plain.polls >= 1
