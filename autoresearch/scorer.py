"""The trusted EVAL scorer: holds the held-out bytes, asks the model server for logits, scores them.

Runs in the runner (host side), with nothing agent-written in it. It cuts the fixed slice
of the split into windows (prepare.eval_windows, prepare's constants), shuffles them into
fixed-shape batches, and mixes hidden checks into every batch:

    splice  a copy of a real window with the bytes after a random position t replaced by the
            same positions of another real window (real text, so it looks like any window):
            the logits at positions <= t must equal the real window's (causality);
    repeat  an exact copy of a real window, in another batch, at another position, with
            other companions: its logits must equal the real window's (determinism and
            batch independence).

Every request has at least one check and about 11% of all windows are checks; a check may
come before or after its real window, and nothing in shape, dtype, order or model mode tells
them apart. The loss is computed here, in float64, from the raw logits (prepare.window_nats);
then the sanity checks: finite, every byte scored, not past metric.floor. A failed check or a
malformed answer is `invalid` with a one-line reason; agent code failing is `crash`.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from . import protocol as P

CHECK_FRACTION = 0.11          # of all windows sent; every request gets at least one
# Tolerances (relative to max(1, |logit|max)), measured on CPU: the default model's logits for
# the same window in another batch, or with a different suffix, differ by 0 to ~2e-6 (kernels
# block the batch differently); float16 answers round at ~5e-4. A peek moves a logit by O(1).
TOLERANCE = {"<f4": 1e-4, "<f2": 4e-3}
PIPELINE = 1                   # requests in flight: the scorer scores one while the server computes the next
# After READY the server has seen held-out windows, so its words may quote them: of a failure
# message only what model_server.py itself writes passes (an exception's type, a shape).
_SAFE_FAILURE = re.compile(r"the model (returned logits of shape \([0-9, ]*\), expected \([0-9, ]*\)"
                           r"|failed during evaluation: [A-Za-z_][A-Za-z0-9_.]{0,80})")


@dataclass
class Check:
    kind: str                  # "splice" | "repeat"
    origin: int                # the real window it copies
    t: int                     # splice: positions 0..t must agree; repeat: T - 1 (all)


@dataclass
class Plan:
    """What is sent, in which order: slots[r] lists, per batch row, ("real", i) or ("check", c)."""
    windows: np.ndarray        # (n, T) uint8 real windows
    targets: np.ndarray        # (n, T) uint8
    checks: list[Check]
    check_windows: np.ndarray  # (k, T) uint8
    slots: list[list[tuple[str, int]]]

    @classmethod
    def make(cls, windows: np.ndarray, targets: np.ndarray, batch: int, rng: np.random.Generator) -> "Plan":
        n, T = windows.shape
        k = max(math.ceil(n * CHECK_FRACTION / (1 - CHECK_FRACTION)), 1)
        k += (-(n + k)) % batch                          # whole batches
        n_req = (n + k) // batch
        if k < n_req:
            k += batch * math.ceil((n_req - k) / (batch - 1))
            k += (-(n + k)) % batch
            n_req = (n + k) // batch
        origins = rng.choice(n, size=k, replace=k > n)
        checks, cw = [], np.empty((k, T), dtype=np.uint8)
        for c, i in enumerate(origins):
            if rng.random() < 0.5 and T > 1 and n > 1:
                t = int(rng.integers(0, T - 1))
                j = int(rng.integers(0, n - 1))
                j += j >= i
                cw[c, : t + 1] = windows[i, : t + 1]
                cw[c, t + 1:] = windows[j, t + 1:]
                checks.append(Check("splice", int(i), t))
            else:
                cw[c] = windows[i]
                checks.append(Check("repeat", int(i), T - 1))
        items = [("check", c) for c in range(n_req, k)] + [("real", i) for i in range(n)]
        rng.shuffle(items)                               # type: ignore[arg-type]
        slots = []
        for r in range(n_req):
            row = items[r * (batch - 1):(r + 1) * (batch - 1)] + [("check", r)]
            rng.shuffle(row)                             # type: ignore[arg-type]
            slots.append([(str(a), int(b)) for a, b in row])
        assert sum(len(s) for s in slots) == n + k
        return cls(windows, targets, checks, cw, slots)

    def batch_bytes(self, r: int) -> bytes:
        return b"".join((self.windows[i] if kind == "real" else self.check_windows[i]).tobytes()
                        for kind, i in self.slots[r])


class Verdict(Exception):
    """End the session: status and one-line reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Scorer:
    """One scoring session. Use `session` as the sandbox's stdio session; then read `result`."""
    split: np.ndarray                                   # the held-out bytes (uint8)
    prepare: Any                                        # the project's prepare module (trusted)
    floor: float | None = None
    direction: str = "minimize"
    metric: str = "val_bpb"
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(secrets.randbits(128)))
    result: dict | None = None
    done: threading.Event = field(default_factory=threading.Event)
    ready: bool = False                                 # the server said READY: it has been shown held-out windows

    def plan(self) -> Plan:
        x, y = self.prepare.eval_windows(self.split)
        return Plan.make(np.ascontiguousarray(x, dtype=np.uint8), np.ascontiguousarray(y, dtype=np.uint8),
                         int(self.prepare.EVAL_BATCH), self.rng)

    def session(self, wfile: BinaryIO, rfile: BinaryIO) -> None:
        """Talk to the server; always leaves a result (a runner-side bug becomes a crash with its reason)."""
        t0 = time.monotonic()
        try:
            self.result = {"status": "ok", **self._run(wfile, rfile, t0)}
        except Verdict as v:
            self.result = {"status": v.status, "reason": v.reason}
        except P.ProtocolError as e:
            self.result = {"status": "crash", "hangup": True,
                           "reason": f"the model server stopped answering ({e})"}
        except Exception as e:                           # noqa: BLE001 -- never leave the runner without a result
            self.result = {"status": "crash", "reason": f"scorer error: {type(e).__name__}: {e}"}
        finally:
            self.result = {**(self.result or {}), "scorer_seconds": round(time.monotonic() - t0, 3)}
            self.done.set()

    def _message(self, rfile: BinaryIO, tag: bytes) -> str:
        text = P.read_message_body(rfile)
        one = " ".join(text.split())[:400]
        if self.ready and tag != P.READY:
            one = one if _SAFE_FAILURE.fullmatch(one) else "the model failed while answering a request"
            one += "; the traceback is in the EVAL log (for humans only): reproduce it on a batch of training data"
        if tag == P.FAILED:
            raise Verdict("crash", one)
        if tag == P.REFUSED:
            raise Verdict("invalid", one)
        return text

    def _run(self, wfile: BinaryIO, rfile: BinaryIO, t0: float) -> dict:
        V, B, T = int(self.prepare.VOCAB_SIZE), int(self.prepare.EVAL_BATCH), int(self.prepare.CONTEXT_LEN)
        try:
            plan = self.plan()
        except self.prepare.DataError as e:
            raise Verdict("invalid", f"the held-out data is too short: {e}") from None
        tag = P.read_exact(rfile, 4)
        if tag not in P.MESSAGE_TAGS:
            raise Verdict("invalid", f"the model server broke the protocol: {tag!r} instead of READY")
        try:
            hello = json.loads(self._message(rfile, tag))
            device = str(hello.get("device"))[:100]
        except (ValueError, AttributeError):
            raise Verdict("invalid", "the model server broke the protocol: an unreadable READY") from None
        t_ready = time.monotonic()
        self.ready = True
        n_req = len(plan.slots)
        need = {c.origin for c in plan.checks}
        kept: dict[tuple[str, int], np.ndarray] = {}     # logits of checks and of the windows they copy
        total_nats, scored, worst = 0.0, 0, 0.0
        sent_at: list[float] = []

        def send(r: int) -> None:
            sent_at.append(time.monotonic())
            P.write_all(wfile, P.request(plan.batch_bytes(r), B, T))

        for r in range(min(PIPELINE, n_req)):
            send(r)
        dtype = "<f4"
        for r in range(n_req):
            tag = P.read_exact(rfile, 4)
            if tag in P.MESSAGE_TAGS:
                self._message(rfile, tag)
                raise Verdict("invalid", f"the model server broke the protocol: a message instead of logits "
                                         f"for request {r + 1}")
            if tag not in P.LOGIT_TAGS:
                raise Verdict("invalid", f"the model server broke the protocol: tag {tag!r} for request {r + 1}")
            dt = P.LOGIT_TAGS[tag]
            if r and dt != dtype:
                raise Verdict("invalid", "the model server changed the logits dtype between requests")
            dtype = dt
            size = B * T * V * np.dtype(dt).itemsize
            logits = np.frombuffer(P.read_exact(rfile, size), dtype=dt).reshape(B, T, V)
            worst = max(worst, time.monotonic() - sent_at[r])
            if r + PIPELINE < n_req:
                send(r + PIPELINE)
            if not np.isfinite(logits).all():
                raise Verdict("invalid", "the model's logits contain NaN or inf")
            reals = [(row, i) for row, (kind, i) in enumerate(plan.slots[r]) if kind == "real"]
            rows = [row for row, _ in reals]
            idx = [i for _, i in reals]
            nats = self.prepare.window_nats(logits[rows], plan.targets[idx])
            total_nats += float(nats.sum())
            scored += nats.size
            for row, (kind, i) in enumerate(plan.slots[r]):
                if kind == "check" or i in need:
                    kept[(kind, i)] = np.array(logits[row], dtype=np.float32)
        t_done = time.monotonic()
        self._verify(plan, kept, TOLERANCE[dtype])
        bpb = total_nats / scored / math.log(2)
        if not math.isfinite(bpb):
            raise Verdict("invalid", f"the loss is {bpb} (NaN or inf)")
        if scored < int(self.prepare.EVAL_BYTES):
            raise Verdict("invalid", f"only {scored} bytes were scored, the evaluation needs {self.prepare.EVAL_BYTES}")
        if self.floor is not None and (bpb < self.floor if self.direction == "minimize" else bpb > self.floor):
            raise Verdict("invalid", f"{self.metric} {bpb:.4f} is past the physical floor {self.floor} for this "
                                     f"corpus: a leak or a bug, not a better model")
        return {"value": bpb, "bytes": scored, "device": device, "load_seconds": round(t_ready - t0, 3),
                "score_seconds": round(t_done - t_ready, 3), "requests": n_req, "check_windows": len(plan.checks),
                "max_request_seconds": round(worst, 3), "logits_dtype": "float16" if dtype == "<f2" else "float32"}

    @staticmethod
    def _verify(plan: Plan, kept: dict[tuple[str, int], np.ndarray], rel: float) -> None:
        for c, chk in enumerate(plan.checks):
            a, b = kept[("check", c)][: chk.t + 1], kept[("real", chk.origin)][: chk.t + 1]
            tol = rel * max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))
            diff = np.abs(a - b).max(axis=-1)
            if float(diff.max()) <= tol:
                continue
            pos = int(np.argmax(diff > tol))
            if chk.kind == "splice":
                raise Verdict("invalid", f"the model looks ahead: its logits at position {pos} changed by "
                                         f"{float(diff[pos]):.3g} when only bytes after position {chk.t} changed; "
                                         f"keep attention (and everything else) causal")
            raise Verdict("invalid", f"the same window got different logits when sent again (by {float(diff.max()):.3g} "
                                     f"at position {pos}): in eval mode the output must be deterministic (no dropout "
                                     f"or sampling) and must not depend on the other sequences in the batch or on "
                                     f"earlier requests")
