"""The host relay of the evaluator split (eval.model): the trusted eval script's requests to the
agent's model servers, every answer checked, some asked again of another server.

    eval script (its sandbox: held-out data, labels, metric file; no agent code)
        --ARRAYS-->  relay (here, in the runner)  --ARRAYS-->  model server k (its sandbox: agent code,
        <--ARRAYS--                               <--ARRAYS--  checkpoint; no data, no network)

Every answer must name at least one array, each with the request's batch as its first dimension,
a plain numeric dtype, finite floats, within eval.max_mb. Hidden checks (eval.checks, the share of
requests, and always the first): the same rows are sent to the OTHER server, a separate process
that never answered them, and must get the same outputs within eval.tolerance, compared as the
script scores them (eval.compare, per output: log_softmax in nats, softmax, argmax exactly, raw;
ABSOLUTE in those units, so no transformation that leaves the score unchanged -- a constant added,
never-chosen classes pushed to -1e9 -- widens a check; undeclared: both absolute and relative to
the row's spread around its median, see `spread`, and the larger must be within; integer outputs
exactly). With eval.batch_independent the re-sent
batch mixes half the rows with rows of the previous request, in a shuffled order, so an answer
that depends on its batch-mates fails too. Real requests alternate between the two servers; a
check looks like any request. A failed check or a malformed answer is `invalid`; the model
failing is `crash`; both end the evaluation whatever the script does next.
"""
from __future__ import annotations

import re
import secrets
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from ..inside import protocol as P
from .scorer import EvalEnded, gate

# After READY the server may have seen held-out inputs, and every reason reaches the agent: what a
# server says or sends then passes only as fixed text (an exception type only if a known one).
_FAILED = re.compile(r"the model failed during evaluation: ([A-Za-z_][A-Za-z0-9_.]{0,80})")
Arrays = dict[str, Any]


def spread(v: np.ndarray) -> float:
    """How far values lie from their center: the 90th percentile of |v - median(v)|. A constant
    added to every output does not change it (an argmax or a ranking is unchanged by one, so a
    scale of |v| would give a model that adds 1e6 room to answer by memory under the tolerance),
    nor do a few extreme dummy outputs; scaling the outputs scales it."""
    v = np.asarray(v, dtype=np.float64).ravel()
    return float(np.percentile(np.abs(v - np.median(v)), 90)) if v.size else 0.0


def rel_diff(ref: np.ndarray, again: np.ndarray, batch_scale: float) -> float:
    """A re-asked float row's largest difference relative to the row's spread; for one value per
    row, or a row of equal values, the checked batch's spread; with none, its largest |value|.
    Never a floor: outputs scaled down to 1e-6 would hide the whole signal under one."""
    r = ref.astype(np.float64)
    diff = float(np.abs(again.astype(np.float64) - r).max(initial=0.0))
    scale = spread(r) or batch_scale or float(np.abs(r).max(initial=0.0))
    return diff / scale if scale > 0 else 0.0 if diff == 0 else float("inf")


LOGIT_LIMIT = 1e4                      # a log_softmax/softmax-declared output beyond +-this is refused


def log_softmax(v: np.ndarray) -> np.ndarray:
    z = np.asarray(v, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def diff_as_scored(mode: str, ref: np.ndarray, again: np.ndarray, batch_scale: float) -> float:
    """A re-asked row's difference in the units of what the script scores (eval.compare)."""
    if ref.dtype.kind != "f" or mode == "argmax":
        same = np.array_equal(ref, again) if ref.dtype.kind != "f" else \
            np.array_equal(np.argmax(ref, axis=-1), np.argmax(again, axis=-1))
        return 0.0 if same else float("inf")
    if mode == "log_softmax":
        return float(np.abs(log_softmax(again) - log_softmax(ref)).max(initial=0.0))
    if mode == "softmax":
        return float(np.abs(np.exp(log_softmax(again)) - np.exp(log_softmax(ref))).max(initial=0.0))
    raw = float(np.abs(again.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
    if mode == "raw":
        return raw
    if mode == "spread":
        return rel_diff(ref, again, batch_scale)
    # undeclared: the stricter of both. Sentinels widen the spread but not an absolute difference;
    # outputs scaled down shrink an absolute difference but not one relative to the spread.
    return max(raw, rel_diff(ref, again, batch_scale))


@dataclass
class Server:
    w: BinaryIO | None = None
    r: BinaryIO | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    problem: EvalEnded | None = None


@dataclass
class Relay:
    """One evaluation's relay: `server_session(k)` and `client_session()` go to the sandboxes."""
    checks: float = 0.1
    mix: bool = True
    tolerance: float = 1e-4
    compare: dict[str, str] = field(default_factory=dict)   # eval.compare: output name (or "*") -> mode
    limit: int = 256 << 20
    servers: int = 2
    wait_s: float = 600.0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(secrets.randbits(128)))
    verdict: EvalEnded | None = None
    hangup: bool = False                      # a server vanished: its sandbox result says why
    done: threading.Event = field(default_factory=threading.Event)
    # The servers may start with TRAIN (evalsplit.SplitServers): GO goes to them once `go` is set
    # (TRAIN ended ok, its checkpoint is final); aborted without it, the sessions hang up instead.
    go: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False
    stats: dict = field(default_factory=lambda: {"requests": 0, "check_requests": 0, "check_max_diff": 0.0})
    prev: tuple[Arrays, Arrays] | None = None

    def __post_init__(self) -> None:
        self.srv = [Server() for _ in range(self.servers)]

    def server_session(self, k: int):
        def talk(w: BinaryIO, r: BinaryIO) -> None:
            s = self.srv[k]
            try:
                got = gate(self.go, lambda: self.aborted, w)
                if got == "abort":
                    return
                if got == "dead":                        # it died warming up: its sandbox says why
                    raise P.ProtocolError("it ended during its warm-up")
                tag = P.read_exact(r, 4)
                if tag == P.READY:
                    P.read_message_body(r)
                    s.w, s.r = w, r
                elif tag in (P.FAILED, P.REFUSED):      # before any request: it has seen no held-out input
                    s.problem = EvalEnded("crash" if tag == P.FAILED else "invalid",
                                        " ".join(P.read_message_body(r).split())[:400])
                else:
                    s.problem = EvalEnded("invalid", f"the model server broke the protocol: {tag!r} instead of READY")
            except P.ProtocolError as e:
                s.problem = EvalEnded("crash", f"the model server exited before it was ready ({e})")
                self.hangup = True
            finally:
                s.ready.set()
            if s.w is not None:
                self.done.wait()
        return talk

    def client_session(self):
        def talk(w: BinaryIO, r: BinaryIO) -> None:
            try:
                self._serve(w, r)
            except EvalEnded as v:
                self.verdict = self.verdict or v
                with suppress(OSError, ValueError):
                    P.write_all(w, P.message(P.FAILED if v.status == "crash" else P.REFUSED, v.reason))
            except (P.ProtocolError, OSError, ValueError):
                pass                                    # the script broke off: its own exit decides
            except Exception as e:                      # noqa: BLE001 -- fail closed: never an unjudged run
                self.verdict = self.verdict or EvalEnded("crash", f"the relay failed ({type(e).__name__}); "
                                                                f"the evaluation is void")
            finally:
                self.done.set()
        return talk

    def _serve(self, w: BinaryIO, r: BinaryIO) -> None:
        while tag := r.read(4):
            if tag == P.REFUSED:                        # the (trusted) script refused an answer
                raise EvalEnded("invalid", " ".join(P.read_message_body(r).split())[:400])
            if tag != P.ARRAYS_IN:
                raise P.ProtocolError(f"the eval script sent {tag!r}")
            inputs = P.read_arrays(r, self.limit)
            batch = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
            if len(batch) != 1 or min(batch) < 1:
                raise EvalEnded("crash", "the eval script's inputs need one batch size as every array's first "
                                       "dimension (at least 1)")
            n, k = self.stats["requests"], self.stats["requests"] % self.servers
            out = self._ask(k, inputs, min(batch), n)
            if self.servers > 1 and (n == 0 or self.rng.random() < self.checks):
                self._check((k + 1) % self.servers, inputs, out, min(batch), n)
            self.prev = (inputs, out)
            self.stats["requests"] += 1
            P.write_all(w, P.arrays(P.ARRAYS_OUT, out))

    def _ask(self, k: int, inputs: Arrays, batch: int, n: int) -> Arrays:
        s = self.srv[k]
        if not s.ready.wait(self.wait_s):
            raise EvalEnded("timeout", f"the model server was not ready after {self.wait_s:g} s")
        if s.problem is not None:
            raise s.problem
        assert s.w is not None and s.r is not None
        try:
            P.write_all(s.w, P.arrays(P.ARRAYS_IN, inputs))
            tag = P.read_exact(s.r, 4)
            if tag in (P.FAILED, P.REFUSED):
                one = " ".join(P.read_message_body(s.r).split())[:400]
                known = _FAILED.match(one)                # a known type, never its words
                one = f"the model failed during evaluation: {P.exception_name(known.group(1))}" if known \
                    else "the model failed"
                raise EvalEnded("crash", f"{one}; the traceback is in the eval log (for humans only)")
            if tag != P.ARRAYS_OUT:
                raise EvalEnded("invalid", f"the model server broke the protocol: an unknown tag for request {n + 1}")
            out = P.read_arrays(s.r, self.limit)
        except (P.StreamEnded, OSError) as e:
            self.hangup = True
            raise EvalEnded("crash", f"the model server stopped answering ({type(e).__name__})") from None
        except P.ProtocolError as e:                  # its words are ours: it quotes nothing the server sent
            raise EvalEnded("invalid", f"the model server broke the protocol: {e}") from None
        except EvalEnded:
            raise
        except Exception:                             # noqa: BLE001 -- anything else a server's frame causes
            raise EvalEnded("invalid", "the model server broke the protocol: an answer the relay cannot read") from None
        for i, a in enumerate(out.values()):
            if a.ndim < 1 or a.shape[0] != batch:
                raise EvalEnded("invalid", f"the model's output number {i + 1} does not have the batch ({batch}) as "
                                         f"its first dimension")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise EvalEnded("invalid", f"the model's output number {i + 1} contains NaN or inf")
        for i, (name, a) in enumerate(out.items()):
            if self.mode(name) in ("log_softmax", "softmax") and a.dtype.kind == "f" and a.size \
                    and float(np.abs(a).max()) > LOGIT_LIMIT:
                raise EvalEnded("invalid", f"the model's output number {i + 1} reaches beyond +-{LOGIT_LIMIT:g}: "
                                         f"return logits of a sane scale (what is scored is their softmax)")
        return out

    def mode(self, name: str) -> str:
        return self.compare.get(name, self.compare.get("*", "undeclared"))

    def _rows(self, inputs: Arrays, batch: int) -> list[tuple[int, int]]:
        """(source, row) of the check batch: 0 this request, 1 the previous one."""
        if not self.mix:
            return [(0, i) for i in range(batch)]
        prev = self.prev
        same = prev is not None and prev[0].keys() == inputs.keys() and all(
            prev[0][k].dtype == a.dtype and prev[0][k].shape[1:] == a.shape[1:] for k, a in inputs.items())
        mine = self.rng.permutation(batch)[:max(1, batch // 2) if same else batch]
        rows = [(0, int(i)) for i in mine]
        if same and prev is not None:
            pb = next(iter(prev[0].values())).shape[0]
            rows += [(1, int(j)) for j in self.rng.choice(pb, size=batch - len(rows), replace=pb < batch - len(rows))]
        return [rows[i] for i in self.rng.permutation(len(rows))]

    def _check(self, k: int, inputs: Arrays, out: Arrays, batch: int, n: int) -> None:
        rows = self._rows(inputs, batch)
        src = (inputs, out), self.prev or (inputs, out)
        check = {name: np.stack([src[s][0][name][i] for s, i in rows]) for name in inputs}
        got = self._ask(k, check, batch, n)
        self.stats["check_requests"] += 1
        if got.keys() != out.keys():
            raise EvalEnded("invalid", "the model answered a repeated request with other output names")
        for name in out:
            refs = []
            for row, (s, i) in enumerate(rows):
                ref = src[s][1].get(name)
                if ref is None or ref.shape[1:] != got[name][row].shape or ref.dtype != got[name][row].dtype:
                    raise EvalEnded("invalid", "the model's output changed shape or dtype for the same input")
                refs.append(ref[i])
            batch_scale = spread(np.stack(refs)) if refs and refs[0].dtype.kind == "f" else 0.0
            for row, ref in enumerate(refs):
                rel = diff_as_scored(self.mode(name), ref, got[name][row], batch_scale)
                # one significant digit: a value the model sets must not carry held-out inputs out
                self.stats["check_max_diff"] = max(self.stats["check_max_diff"], float(f"{rel:.0e}"))
                if rel > self.tolerance:
                    raise EvalEnded("invalid", f"the model answered the same input differently when asked again "
                                             f"(by more than eval.tolerance {self.tolerance:g}): "
                                             f"predict must be deterministic and remember nothing between requests"
                                             + (", and a row's answer must not depend on its batch-mates"
                                                if self.mix else ""))
