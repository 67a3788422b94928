"""Red team of the evaluator split's relay (eval.model): a hostile model server answers the trusted
eval script's requests with crafted frames, over real pipes to the real Relay.

Two guarantees are attacked. Every frame a server can send ends in a verdict (invalid or crash),
never an exception that slips past the relay and leaves the run unjudged, and never an allocation
past eval.max_mb (numpy's int64 size products wrap: a shape of 2**62 x 4 once counted as 0 bytes,
and a negative size let a second array past the limit). And nothing a server says after it has
seen held-out inputs reaches the reason the agent reads: not an array name, a shape, a tag, a
length, an exception type of its own making. Every attacker-chosen string below carries MARK.
"""
from __future__ import annotations

import json
import os
import select
import struct
import threading

import numpy as np
import pytest

from autoresearch.inside import protocol as P
from autoresearch.run.relay import Relay

MARK = "Xq7leak"
U32 = struct.Struct("<I")


def _header(arrays: list[dict] | str) -> bytes:
    raw = (arrays if isinstance(arrays, str) else json.dumps({"arrays": arrays})).encode()
    return P.ARRAYS_OUT + U32.pack(len(raw)) + raw


def _serve(answer, rfd: int, wfd: int) -> None:
    """A fake model server: GO awaited (as the real one does), READY, then `answer(inputs)` bytes
    for each request."""
    with open(rfd, "rb", buffering=0) as r, open(wfd, "wb", buffering=0) as w:
        try:
            if not P.wait_go(r):
                return
            w.write(P.message(P.READY, "{}"))
            while r.read(4):
                w.write(answer(P.read_arrays(r, 1 << 30)))
        except (OSError, P.ProtocolError):
            pass


def drive(*answers, checks: float = 0.0, limit: int = 1 << 20, compare: dict | None = None) -> tuple[Relay, bytes]:
    """One request of a (4, 3) float batch through a real Relay to fake servers; (relay, the
    tag the script got back)."""
    relay = Relay(checks=checks, servers=len(answers), limit=limit, wait_s=10, compare=compare or {})
    relay.go.set()                                   # TRAIN ended ok: the servers may load the model
    threads, ends = [], []
    for k, answer in enumerate(answers):
        to_srv, to_relay = os.pipe(), os.pipe()
        ends += [open(to_srv[1], "wb", buffering=0), open(to_relay[0], "rb", buffering=0)]
        threads.append(threading.Thread(target=relay.server_session(k), daemon=True, args=tuple(ends[-2:])))
        threads.append(threading.Thread(target=_serve, args=(answer, to_srv[0], to_relay[1]), daemon=True))
    c_in, c_out = os.pipe(), os.pipe()
    threads.append(threading.Thread(target=relay.client_session(), daemon=True,
                                    args=(open(c_out[1], "wb", buffering=0), open(c_in[0], "rb", buffering=0))))
    for t in threads:
        t.start()
    with open(c_in[1], "wb", buffering=0) as w, open(c_out[0], "rb", buffering=0) as r:
        w.write(P.arrays(P.ARRAYS_IN, {"x": np.arange(12, dtype=np.float32).reshape(4, 3) + 1}))
        tag = r.read(4) if select.select([r], [], [], 10)[0] else b"(none: the relay hung)"
    relay.done.wait(10)
    relay.done.set()
    for f in ends:                                  # the sandbox's end: the server sees its stdin close
        f.close()
    for t in threads:
        t.join(10)
    return relay, tag


def honest(inputs):
    return P.arrays(P.ARRAYS_OUT, {"y": inputs["x"] * 2})


HOSTILE = {
    # sizes that numpy's int64 product wraps: to 0, or negative so a second array passes the limit
    "wraps_to_zero": lambda i: _header([{"name": "y", "dtype": "<f8", "shape": [2 ** 62, 4]}]),
    "negative_total": lambda i: _header([{"name": "a", "dtype": "<u1", "shape": [1 << 30]},
                                         {"name": "b", "dtype": "<u1", "shape": [2 ** 62, 3]}]),
    "infinite_dim": lambda i: _header('{"arrays": [{"name": "y", "dtype": "<f4", "shape": [Infinity]}]}'),
    "float_dim": lambda i: _header([{"name": "y", "dtype": "<f4", "shape": [4.5]}]),
    "bool_dim": lambda i: _header([{"name": "y", "dtype": "<f4", "shape": [True, 3]}]),
    "deep_json": lambda i: _header('{"arrays": ' + "[" * 30000 + "]" * 30000 + "}"),
    "not_a_list": lambda i: _header('{"arrays": 7}'),
    "name_not_str": lambda i: _header([{"name": 5, "dtype": "<f4", "shape": [4]}]),
    "object_dtype": lambda i: _header([{"name": "y", "dtype": "|O", "shape": [4]}]),
    "big_endian": lambda i: _header([{"name": "y", "dtype": ">f4", "shape": [4]}]),
    "huge_header": lambda i: P.ARRAYS_OUT + U32.pack(0xFFFFFFF0),
    # exfiltration through what the relay would quote back
    "bad_name": lambda i: _header([{"name": MARK + " words", "dtype": "<f4", "shape": [4]}]),
    "bad_dtype": lambda i: _header([{"name": "y", "dtype": MARK, "shape": [4]}]),
    "name_in_shape_error": lambda i: P.arrays(P.ARRAYS_OUT, {MARK: np.zeros((1, 777), np.float32)}),
    "name_in_nan_error": lambda i: P.arrays(P.ARRAYS_OUT, {MARK: np.full((4, 2), np.nan, np.float32)}),
    "bad_tag": lambda i: b"Xq7l",
    "own_exception_type": lambda i: P.message(P.FAILED, f"the model failed during evaluation: {MARK}Error"),
    "free_text": lambda i: P.message(P.FAILED, f"{MARK} the held-out input was {i['x'].tolist()}"),
    "zero_d": lambda i: P.arrays(P.ARRAYS_OUT, {"y": np.float32(1.0)}),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_every_hostile_frame_ends_in_a_verdict_that_quotes_nothing(kind):
    relay, tag = drive(HOSTILE[kind])
    assert relay.verdict is not None, "the relay let a hostile frame pass without a verdict"
    assert relay.verdict.status in ("invalid", "crash"), relay.verdict
    assert MARK not in relay.verdict.reason and "777" not in relay.verdict.reason, relay.verdict.reason
    assert tag in (P.FAILED, P.REFUSED), "the script must hear that the model was refused"


def test_a_known_exception_type_is_still_named():
    relay, _ = drive(lambda i: P.message(P.FAILED, "the model failed during evaluation: ValueError"))
    assert relay.verdict is not None and "ValueError" in relay.verdict.reason


def test_an_honest_server_passes_and_the_figures_carry_one_digit():
    centered = lambda factor: lambda i: P.arrays(P.ARRAYS_OUT, {"y": logits(i, factor)})
    relay, tag = drive(centered(1.0), centered(1 + 1.234567e-6), checks=1.0)
    assert relay.verdict is None and tag == P.ARRAYS_OUT
    v = relay.stats["check_max_diff"]
    assert 0 < v < 1e-4 and v == float(f"{v:.0e}"), relay.stats      # not 1.23456...e-6: no free channel


def logits(inputs, factor: float = 1.0, offset: float = 0.0, dtype=np.float32):
    """Outputs shaped like logits (centered, spread of a few units), scaled by factor, plus offset."""
    x = inputs["x"].astype(np.float64)
    return ((x - x.mean(axis=1, keepdims=True)) * 2 * factor + offset).astype(dtype)


@pytest.mark.parametrize("offset", [1e6, -3e4])
def test_a_large_constant_added_to_every_output_does_not_widen_the_tolerance(offset):
    """An argmax, a softmax or a ranking is unchanged by a constant added to every output; with the
    tolerance relative to |output|, that constant bought room to answer from memory (here: one logit
    moved by 0.5, a 1e-6 change relative to 1e6) and passed."""
    first = lambda i: P.arrays(P.ARRAYS_OUT, {"y": logits(i, offset=offset, dtype=np.float64)})

    def remembers(i):                                  # the second server's answer depends on its past
        y = logits(i, offset=offset, dtype=np.float64)
        y[:, 0] += 0.5
        return P.arrays(P.ARRAYS_OUT, {"y": y})
    relay, _ = drive(first, remembers, checks=1.0)
    assert relay.verdict is not None and "differently when asked again" in relay.verdict.reason, relay.stats
    relay, _ = drive(first, first, checks=1.0)          # the same offset, answered the same: fine
    assert relay.verdict is None, relay.verdict


def test_a_constant_added_to_one_value_per_row_is_judged_by_the_batch_spread():
    """One score per row (a ranking across rows is unchanged by an offset): the scale is the spread
    of the checked batch's scores, not their magnitude."""
    score = lambda bump: lambda i: P.arrays(P.ARRAYS_OUT, {"s": (i["x"][:, 0].astype(np.float64) + 1e6 + bump)})
    relay, _ = drive(score(0.0), score(0.5), checks=1.0)
    assert relay.verdict is not None and "differently when asked again" in relay.verdict.reason, relay.stats
    relay, _ = drive(score(0.0), score(0.0), checks=1.0)
    assert relay.verdict is None, relay.verdict


def test_outputs_scaled_down_do_not_hide_state_under_the_tolerance():
    """Outputs of 1e-6 (a ranking or argmax is unchanged) once met a tolerance of 1e-4 absolute
    (the scale had a floor of 1): a second server answering anything within 1e-4 passed."""
    tiny = lambda noise: lambda i: P.arrays(P.ARRAYS_OUT, {"y": (i["x"] * 1e-6 + noise).astype(np.float32)})
    relay, _ = drive(tiny(0.0), tiny(5e-6), checks=1.0)
    assert relay.verdict is not None and "differently when asked again" in relay.verdict.reason, relay.verdict


@pytest.mark.parametrize("said", [f"the model failed during evaluation: {MARK}Error",
                                  "the model returned logits of shape (4, 2, 99999999), expected (4, 2, 256)"])
def test_the_default_scorer_quotes_no_number_or_own_type_either(said):
    """The default task's scorer passes the same kind of server message: an exception type of the
    model's own making or a shape's numbers (up to 400 digits) once reached the agent verbatim."""
    import io

    import prepare
    from autoresearch.run.scorer import Scorer, EvalEnded
    scorer = Scorer(np.random.default_rng(0).integers(0, 256, 1 << 16).astype(np.uint8), prepare)
    frame = P.message(P.FAILED, said)
    with pytest.raises(EvalEnded) as v:
        scorer._message(io.BytesIO(frame[4:]), P.FAILED, True)
    assert MARK not in v.value.reason and "99999999" not in v.value.reason, v.value.reason
    assert "the model" in v.value.reason


# ------------------------------------------------------------------ issue 24: compared as scored (eval.compare)

def _sentinel(i, value: float, bump: float = 0.0):
    """Logits over 3 classes with most of the batch's entries pushed to `value`: the spread of the
    row grows with |value|; the class that is scored moves by `bump` (an answer from memory)."""
    y = logits(i, dtype=np.float64)
    wide = np.concatenate([y, np.full((y.shape[0], 12), value)], axis=1)
    wide[:, 0] += bump
    return P.arrays(P.ARRAYS_OUT, {"y": wide})


@pytest.mark.parametrize("value", [-1e9, -5e3])
def test_sentinel_outputs_cannot_widen_a_log_softmax_check(value):
    """Relative to the row's spread alone (eval.compare: spread, the legacy mode), sentinels at -1e9
    (a softmax ignores them) widen the check until a memory-driven 0.5 shift passes. Undeclared, the
    absolute difference counts too, so it fails; declared as scored (log_softmax, absolute nats) it
    fails; sentinels beyond +-1e4 are refused outright."""
    if value == -1e9:
        relay, _ = drive(lambda i: _sentinel(i, value), lambda i: _sentinel(i, value, 0.5), checks=1.0,
                         compare={"y": "spread"})
        assert relay.verdict is None, "the legacy spread-relative mode is widened by sentinels (hence the default)"
    relay, _ = drive(lambda i: _sentinel(i, value), lambda i: _sentinel(i, value, 0.5), checks=1.0)
    assert relay.verdict is not None and "differently when asked again" in relay.verdict.reason, relay.stats
    relay, _ = drive(lambda i: _sentinel(i, value), lambda i: _sentinel(i, value, 0.5), checks=1.0,
                     compare={"y": "log_softmax"})
    assert relay.verdict is not None and relay.verdict.status == "invalid", relay.stats
    want = "beyond +-" if abs(value) > 1e4 else "differently when asked again"
    assert want in relay.verdict.reason, relay.verdict.reason
    if abs(value) <= 1e4:
        relay, _ = drive(lambda i: _sentinel(i, value), lambda i: _sentinel(i, value), checks=1.0,
                         compare={"*": "log_softmax"})
        assert relay.verdict is None, relay.verdict


@pytest.mark.parametrize("mode", ["log_softmax", "softmax", "raw"])
def test_a_constant_shift_is_judged_as_scored(mode):
    """log_softmax and softmax ignore a constant: a shifted honest answer passes, a shifted memory
    answer fails; raw compares the values themselves."""
    shifted = lambda c, bump=0.0: lambda i: P.arrays(P.ARRAYS_OUT, {"y": logits(i, offset=c, dtype=np.float64)
                                                                       + np.eye(1, 3)[0] * bump})
    relay, _ = drive(shifted(0.0), shifted(5e3 if mode != "raw" else 0.0), checks=1.0, compare={"y": mode})
    assert relay.verdict is None, relay.verdict
    relay, _ = drive(shifted(5e3), shifted(5e3, 0.5), checks=1.0, compare={"y": mode})
    assert relay.verdict is not None and "differently when asked again" in relay.verdict.reason


def test_argmax_is_compared_exactly_whatever_the_scale():
    """Accuracy depends on the argmax only: scaled down to 1e-9, a changed winner still fails."""
    tiny = lambda flip: lambda i: P.arrays(P.ARRAYS_OUT, {"y": (logits(i) * 1e-9 + (np.eye(1, 3)[0] * 1e-8 if flip else 0))})
    relay, _ = drive(tiny(False), tiny(True), checks=1.0, compare={"y": "argmax"})
    assert relay.verdict is not None, relay.stats
    relay, _ = drive(tiny(False), tiny(False), checks=1.0, compare={"y": "argmax"})
    assert relay.verdict is None


def test_undeclared_outputs_are_held_by_both_scales():
    """Undeclared: the absolute difference catches what sentinels hide from the spread, and the
    spread catches what scaling down hides from the absolute difference."""
    relay, _ = drive(lambda i: _sentinel(i, -1e9), lambda i: _sentinel(i, -1e9, 0.5), checks=1.0)
    assert relay.verdict is not None and "differently when asked again" in relay.verdict.reason
    tiny = lambda noise: lambda i: P.arrays(P.ARRAYS_OUT, {"y": (i["x"] * 1e-6 + noise).astype(np.float32)})
    relay, _ = drive(tiny(0.0), tiny(5e-6), checks=1.0)
    assert relay.verdict is not None and "differently when asked again" in relay.verdict.reason
    relay, _ = drive(tiny(5e-6), tiny(5e-6), checks=1.0)               # answered the same: fine
    assert relay.verdict is None, relay.verdict


def test_without_go_a_server_gets_nothing_and_an_abort_hangs_up():
    """Started with TRAIN, a server waits: the relay writes nothing to it until GO, and when TRAIN
    fails (aborted) the session ends without GO, so the server never imports agent code."""
    relay = Relay(servers=1, wait_s=10)
    to_srv, to_relay = os.pipe(), os.pipe()
    w, r = open(to_srv[1], "wb", buffering=0), open(to_relay[0], "rb", buffering=0)
    talk = threading.Thread(target=relay.server_session(0), args=(w, r), daemon=True)
    talk.start()
    assert not select.select([to_srv[0]], [], [], 0.3)[0]          # nothing before GO
    relay.aborted = True
    talk.join(5)
    assert not talk.is_alive() and relay.srv[0].ready.is_set()
    w.close()                                                      # the sandbox's end of the session
    with open(to_srv[0], "rb", buffering=0) as srv:
        assert P.wait_go(srv) is False                             # the server exits before agent code
    r.close()
    os.close(to_relay[1])
