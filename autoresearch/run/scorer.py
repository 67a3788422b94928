"""The trusted EVAL scorer: holds the held-out bytes, asks two model servers for logits, scores them.

Runs in the runner (host side), with nothing agent-written in it. It cuts the fixed slice
of the split into windows (prepare.eval_windows, prepare's constants), deals them to two
model servers, each in its own sandbox (no shared /tmp, no network: they cannot talk), and
mixes hidden checks into every batch; a check always goes to the server that did NOT get the
real window it copies:

    splice  a copy of a real window with the bytes after a random position t replaced by the
            same positions of another real window (real text, so it looks like any window):
            the logits at positions <= t must equal the real window's (causality);
    repeat  an exact copy of a real window, in another batch, at another position, with
            other companions: its logits must equal the real window's (determinism and
            batch independence).

Every request has at least one check and about 11% of all windows are checks; nothing in
shape, dtype, order or model mode tells them apart. Because a check and its real window are
answered by different processes, a model cannot pass them by remembering what it said before
(a stateful model that answers a prefix it has seen the same way again would pass any check
inside one process): its logits must be a function of the window alone. The loss is computed here, in float64, from the raw logits (prepare.window_nats);
then the sanity checks: finite, every byte scored, not past metric.floor. A failed check or a
malformed answer is `invalid` with a one-line reason; agent code failing is `crash`.

A check judges exactly what is scored (ARCHITECTURE rule 11): both answers become float64
log-probabilities (log-softmax over the vocabulary) at the positions the check covers, and
must agree within an ABSOLUTE tolerance in nats. The score depends on the logits only through
their log-softmax, so a transformation that leaves the score unchanged (a constant added to
every logit, never-occurring bytes pushed far down) leaves the comparison unchanged too: no
answer can widen the tolerance it is judged by. A peek of d nats at a position moves that
position's log-probabilities by about d, so what passes a check gains at most the tolerance
per byte. Logits that are not finite or lie beyond +-LOGIT_LIMIT are refused.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

import numpy as np

from ..program import BUILTIN_METRIC
from ..inside import protocol as P

CHECK_FRACTION = 0.11          # of all windows sent; every request gets at least one
# Tolerances in nats, on float64 log-softmax (absolute: nothing the model returns sets them).
# Measured (check_max_diff_nats in the result): on CPU the default model's log-probabilities for a
# window in another batch, or with another suffix, differ by exactly 0; GPU kernels (TF32, another
# reduction order for another batch) differ by ~1e-3 x the logits' magnitude (~20 nats); float16
# logits round at 1 ulp (0.016 at 16). A peek that helps moves a log-probability by O(1) nats, and
# one that hides under the tolerance gains at most the tolerance per byte (2e-3 nats = 0.003 bpb).
TOLERANCE = {"<f4": 2e-3, "<f2": 3e-2}
LOGIT_LIMIT = 1e4               # |logit| beyond this is refused: e^-10000 is no probability a model means
PIPELINE = 1                   # requests in flight: the scorer scores one while the server computes the next
# After READY the server has seen held-out windows, so its words may quote them: of a failure
# message only what model_server.py itself writes passes (an exception's type, a shape).
# After READY a server's words may encode held-out bytes: only these pass, its numbers and
# unknown type names replaced (protocol.exception_name), so no free text reaches the agent.
_SAFE_FAILURE = re.compile(r"the model (returned logits of shape \([0-9, ]{0,40}\), expected \([0-9, ]{0,40}\)"
                           r"|failed during evaluation: ([A-Za-z_][A-Za-z0-9_.]{0,80}))")


@dataclass
class Check:
    kind: str                  # "splice" | "repeat"
    origin: int                # the real window it copies
    t: int                     # splice: positions 0..t must agree; repeat: T - 1 (all)


SERVERS = 2


def _started() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


@dataclass
class Plan:
    """What each server is sent, in which order: slots[k][r] lists, per batch row of server k's
    request r, ("real", i) or ("check", c)."""
    windows: np.ndarray        # (n, T) uint8 real windows
    targets: np.ndarray        # (n, T) uint8
    checks: list[Check]
    check_windows: np.ndarray  # (k, T) uint8
    slots: list[list[list[tuple[str, int]]]]

    @classmethod
    def make(cls, windows: np.ndarray, targets: np.ndarray, batch: int, rng: np.random.Generator) -> "Plan":
        n, T = windows.shape
        if n % SERVERS:
            raise ValueError(f"{n} windows do not split evenly between {SERVERS} servers")
        per = n // SERVERS
        # checks per server: about CHECK_FRACTION of its windows, whole batches, >= one per request
        k = max(math.ceil(per * CHECK_FRACTION / (1 - CHECK_FRACTION)), 1)
        k += (-(per + k)) % batch
        while k < (per + k) // batch:
            k += batch
        n_req = (per + k) // batch
        owner = np.repeat(np.arange(SERVERS), per)
        rng.shuffle(owner)
        checks: list[Check] = []
        cw = np.empty((SERVERS * k, T), dtype=np.uint8)
        slots = []
        for srv in range(SERVERS):
            mine = np.flatnonzero(owner == srv)
            theirs = np.flatnonzero(owner != srv)
            origins = rng.choice(theirs, size=k, replace=k > theirs.size)
            first = len(checks)
            for i in origins:
                c = len(checks)
                if rng.random() < 0.5 and T > 1:
                    t = int(rng.integers(0, T - 1))
                    j = int(rng.integers(0, n - 1))
                    j += j >= i
                    cw[c, : t + 1] = windows[i, : t + 1]
                    cw[c, t + 1:] = windows[j, t + 1:]
                    checks.append(Check("splice", int(i), t))
                else:
                    cw[c] = windows[i]
                    checks.append(Check("repeat", int(i), T - 1))
            items = [("check", first + c) for c in range(n_req, k)] + [("real", int(i)) for i in mine]
            rng.shuffle(items)                           # type: ignore[arg-type]
            rows = []
            for r in range(n_req):
                row = items[r * (batch - 1):(r + 1) * (batch - 1)] + [("check", first + r)]
                rng.shuffle(row)                         # type: ignore[arg-type]
                rows.append([(str(a), int(b)) for a, b in row])
            slots.append(rows)
        return cls(windows, targets, checks, cw, slots)

    def batch_bytes(self, srv: int, r: int) -> bytes:
        return b"".join((self.windows[i] if kind == "real" else self.check_windows[i]).tobytes()
                        for kind, i in self.slots[srv][r])


class EvalEnded(Exception):
    """End the evaluation: status and one-line reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Part:
    """What one server's session produced."""
    verdict: EvalEnded | None = None
    hangup: str | None = None                           # the server vanished: the sandbox says why
    device: str = ""
    dtype: str = "<f4"
    nats: float = 0.0
    scored: int = 0
    load_seconds: float = 0.0
    score_seconds: float = 0.0
    worst: float = 0.0
    done: bool = False


def gate(go: threading.Event, aborted: Callable[[], bool], w: BinaryIO) -> str:
    """Hold a model server's session until `go` (TRAIN ended ok, its checkpoint final): "go" once
    GO is written; "abort" when the run was aborted first (the session hangs up, and the server
    exits before agent code); "dead" when the server had already ended (its sandbox says why)."""
    while not go.wait(0.05):
        if aborted():
            return "abort"
    if aborted():
        return "abort"
    try:
        P.write_all(w, P.GO)
    except OSError:
        return "dead"
    return "go"


@dataclass
class Scorer:
    """One evaluation. `session(k)` is server k's stdio session (run them concurrently, one
    sandbox each); then `finish()` gives the result."""
    split: np.ndarray                                   # the held-out bytes (uint8)
    prepare: Any                                        # the project's prepare module (trusted)
    floor: float | None = None
    direction: str = BUILTIN_METRIC.direction          # what this evaluation measures: it declares it,
    metric: str = BUILTIN_METRIC.name                  # and program.md may not say otherwise
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(secrets.randbits(128)))
    parts: list[Part] = field(default_factory=lambda: [Part() for _ in range(SERVERS)])
    kept: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    diffs: dict[int, np.ndarray] = field(default_factory=dict)   # check -> per-position nats, as pairs complete
    plan: Plan | None = None
    plan_error: str | None = None
    aborted: bool = False                               # set by the runner when it is interrupted
    # The servers start (and warm up) with TRAIN; GO goes to them when `go` is set: TRAIN ended ok
    # and its checkpoint is final. Unset and aborted: the sessions hang up without it.
    go: threading.Event = field(default_factory=_started)

    def __post_init__(self) -> None:
        try:
            x, y = self.prepare.eval_windows(self.split)
            self.plan = Plan.make(np.ascontiguousarray(x, dtype=np.uint8), np.ascontiguousarray(y, dtype=np.uint8),
                                  int(self.prepare.EVAL_BATCH), self.rng)
        except self.prepare.DataError as e:
            self.plan_error = f"the held-out data is too short: {e}"

    def session(self, k: int):
        def talk(wfile: BinaryIO, rfile: BinaryIO) -> None:
            part = self.parts[k]
            try:
                got = gate(self.go, lambda: self.aborted, wfile)
                if got == "dead":
                    part.hangup = "the model server exited before its model was loaded"
                if got != "go":
                    return
                t0 = time.monotonic()
                self._run(k, part, wfile, rfile, t0)
            except EvalEnded as v:
                part.verdict = v
            except P.ProtocolError as e:
                part.hangup = f"the model server stopped answering ({e})"
            except Exception as e:                       # noqa: BLE001 -- never leave the runner without a result
                part.verdict = EvalEnded("crash", f"scorer error: {type(e).__name__}: {e}")
            finally:
                part.done = True
        return talk

    def _message(self, rfile: BinaryIO, tag: bytes, ready: bool) -> str:
        text = P.read_message_body(rfile)
        one = " ".join(text.split())[:400]
        if ready and tag != P.READY:
            safe = _SAFE_FAILURE.fullmatch(one)
            if safe is None:
                one = "the model failed while answering a request"
            elif safe.group(2):
                one = f"the model failed during evaluation: {P.exception_name(safe.group(2))}"
            else:
                one = "the model returned logits of another shape than " \
                      f"{(int(self.prepare.EVAL_BATCH), int(self.prepare.CONTEXT_LEN), int(self.prepare.VOCAB_SIZE))}"
            one += "; the traceback is in the EVAL log (for humans only): reproduce it on a batch of training data"
        if tag == P.FAILED:
            raise EvalEnded("crash", one)
        if tag == P.REFUSED:
            raise EvalEnded("invalid", one)
        return text

    def _run(self, k: int, part: Part, wfile: BinaryIO, rfile: BinaryIO, t0: float) -> None:
        if self.plan is None:
            raise EvalEnded("invalid", self.plan_error or "no plan")
        plan = self.plan
        V, B, T = int(self.prepare.VOCAB_SIZE), int(self.prepare.EVAL_BATCH), int(self.prepare.CONTEXT_LEN)
        tag = P.read_exact(rfile, 4)
        if tag not in P.MESSAGE_TAGS:
            raise EvalEnded("invalid", f"the model server broke the protocol: {tag!r} instead of READY")
        try:
            hello = json.loads(self._message(rfile, tag, False))
            part.device = str(hello.get("device"))[:100]
        except (ValueError, AttributeError):
            raise EvalEnded("invalid", "the model server broke the protocol: an unreadable READY") from None
        t_ready = time.monotonic()
        part.load_seconds = round(t_ready - t0, 3)
        slots = plan.slots[k]
        n_req = len(slots)
        need = {c.origin for c in plan.checks}
        sent_at: list[float] = []

        def send(r: int) -> None:
            sent_at.append(time.monotonic())
            P.write_all(wfile, P.request(plan.batch_bytes(k, r), B, T))

        for r in range(min(PIPELINE, n_req)):
            send(r)
        for r in range(n_req):
            if self.aborted:
                raise EvalEnded("crash", "the evaluation was interrupted")
            tag = P.read_exact(rfile, 4)
            if tag in P.MESSAGE_TAGS:
                self._message(rfile, tag, True)
                raise EvalEnded("invalid", f"the model server broke the protocol: a message instead of logits "
                                         f"for request {r + 1}")
            if tag not in P.LOGIT_TAGS:
                raise EvalEnded("invalid", f"the model server broke the protocol: tag {tag!r} for request {r + 1}")
            dt = P.LOGIT_TAGS[tag]
            if r and dt != part.dtype:
                raise EvalEnded("invalid", "the model server changed the logits dtype between requests")
            part.dtype = dt
            logits = np.frombuffer(P.read_exact(rfile, B * T * V * np.dtype(dt).itemsize), dtype=dt).reshape(B, T, V)
            part.worst = max(part.worst, time.monotonic() - sent_at[r])
            if r + PIPELINE < n_req:
                send(r + PIPELINE)
            peak = float(np.abs(logits).max())          # one pass: NaN propagates, inf is > the limit
            if not math.isfinite(peak):
                raise EvalEnded("invalid", "the model's logits contain NaN or inf")
            if peak > LOGIT_LIMIT:
                raise EvalEnded("invalid", f"the model's logits reach {peak:.3g}, beyond +-{LOGIT_LIMIT:g}: return "
                                         f"logits of a sane scale (log-probabilities are fine); the score only "
                                         f"depends on their log-softmax")
            reals = [(row, i) for row, (kind, i) in enumerate(slots[r]) if kind == "real"]
            nats = self.prepare.window_nats(logits[[row for row, _ in reals]], plan.targets[[i for _, i in reals]])
            part.nats += float(nats.sum())
            part.scored += nats.size
            for row, (kind, i) in enumerate(slots[r]):
                if kind == "check" or i in need:
                    self.kept[(kind, i)] = np.array(logits[row], dtype=np.float32)
                    self._compare_ready(kind, i)
        part.score_seconds = round(time.monotonic() - t_ready, 3)

    def _compare_ready(self, kind: str, i: int) -> None:
        """Compare the checks whose pair just completed, while the servers compute the next request
        (off finish()'s critical path). Both sessions call it; a pair done twice gives the same."""
        assert self.plan is not None
        if not hasattr(self, "_by_origin"):
            by: dict[int, list[int]] = {}
            for c, chk in enumerate(self.plan.checks):
                by.setdefault(chk.origin, []).append(c)
            self._by_origin = by
        for c in ([i] if kind == "check" else self._by_origin.get(i, [])):
            chk = self.plan.checks[c]
            a, b = self.kept.get(("check", c)), self.kept.get(("real", chk.origin))
            if a is not None and b is not None:
                self.diffs[c] = check_diff(a, b, chk.t)

    def finish(self) -> dict:
        """The result, once every session has ended: a verdict of either server, else the checks, then sanity.
        {"status": ..., "reason": ...} plus, when ok, the value and the figures for humans."""
        if self.plan is None:
            return {"status": "invalid", "reason": self.plan_error}
        verdicts = [p.verdict for p in self.parts if p.verdict is not None]
        if verdicts:
            v = next((v for v in verdicts if v.status == "invalid"), verdicts[0])
            return {"status": v.status, "reason": v.reason}
        gone = [p.hangup or "the model server's session did not end" for p in self.parts
                if p.hangup or not p.done]
        if gone:
            return {"status": "crash", "hangup": True, "reason": gone[0]}
        if len({p.dtype for p in self.parts}) > 1:
            return {"status": "invalid", "reason": "the two model servers answered in different dtypes"}
        try:
            drift = self._verify(self.plan, self.kept, TOLERANCE[self.parts[0].dtype], self.diffs)
            nats, scored = sum(p.nats for p in self.parts), sum(p.scored for p in self.parts)
            bpb = nats / scored / math.log(2)
            if not math.isfinite(bpb):
                raise EvalEnded("invalid", f"the loss is {bpb} (NaN or inf)")
            if scored < int(self.prepare.EVAL_BYTES):
                raise EvalEnded("invalid", f"only {scored} bytes were scored, the evaluation needs "
                                         f"{self.prepare.EVAL_BYTES}")
            if self.floor is not None and bpb < self.floor:       # a lower bound, as metric.floor is everywhere
                raise EvalEnded("invalid", f"{self.metric} {bpb:.4f} is past the physical floor {self.floor} for this "
                                         f"corpus: a leak or a bug, not a better model")
        except EvalEnded as v:
            return {"status": v.status, "reason": v.reason}
        return {"status": "ok", "value": bpb, "bytes": scored, "device": self.parts[0].device,
                "load_seconds": max(p.load_seconds for p in self.parts),
                "score_seconds": max(p.score_seconds for p in self.parts),
                "servers": SERVERS, "requests": sum(len(s) for s in self.plan.slots),
                "check_windows": len(self.plan.checks), "max_request_seconds": round(max(p.worst for p in self.parts), 3),
                "check_max_diff_nats": drift,
                "logits_dtype": "float16" if self.parts[0].dtype == "<f2" else "float32"}

    @staticmethod
    def _verify(plan: Plan, kept: dict[tuple[str, int], np.ndarray], tol: float,
                diffs: dict[int, np.ndarray] | None = None) -> float:
        """Compare every check with its real window as float64 log-probabilities at the positions
        the check covers, within `tol` nats (`diffs`: those compared already); return the largest
        difference seen (nats)."""
        drift = 0.0
        # repeats first: a model that mixes the batch fails both kinds, and the repeat names the cause
        for c, chk in sorted(enumerate(plan.checks), key=lambda ck: ck[1].kind != "repeat"):
            diff = (diffs or {}).get(c)
            if diff is None:
                diff = check_diff(kept[("check", c)], kept[("real", chk.origin)], chk.t)
            worst = float(diff.max())
            drift = max(drift, worst)
            if worst <= tol:
                continue
            pos = int(np.argmax(diff > tol))
            if chk.kind == "splice":
                raise EvalEnded("invalid", f"the model looks ahead: its log-probabilities at position {pos} changed by "
                                         f"{float(diff[pos]):.3g} nats when only bytes after position {chk.t} "
                                         f"changed; keep attention (and everything else) causal")
            raise EvalEnded("invalid", f"the same window got different log-probabilities when sent again (by "
                                     f"{worst:.3g} nats at position {pos}): in eval mode the output must be "
                                     f"deterministic (no dropout or sampling) and must not depend on the other "
                                     f"sequences in the batch or on earlier requests")
        return drift


def check_diff(check: np.ndarray, real: np.ndarray, t: int) -> np.ndarray:
    """Per position 0..t, the largest |difference| of the two answers' float64 log-probabilities."""
    return np.abs(log_softmax(check[: t + 1]) - log_softmax(real[: t + 1])).max(axis=-1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities over the last axis: what the score is a function of."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
