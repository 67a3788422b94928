"""The trusted eval script's handle on the agent's model (eval.model, the evaluator split).

    from autoresearch.inside.evalclient import model
    out = model({"image": images})           # dict of numpy arrays in, dict of numpy arrays out
    out = model({"text": tokens}, expect={"embedding": ((None, 64), "float32")})

The eval script runs in its own sandbox with the held-out mounts and the metric file, without the
agent's code; the model runs in another sandbox with the checkpoint and no data. Requests go over
this process's stdin/stdout to the host relay, which checks every answer, may ask a second model
server the same rows (eval.checks) and answers here. Every input array has the batch as its first
dimension; so has every output. A refused or failed answer raises ModelError: the run is then
`crash` or `invalid` with the relay's reason, whatever the script does next.

Importing this module takes fd 0 and 1 for the relay: print() then goes to stderr (eval.log).
"""
from __future__ import annotations

import os
import sys
from typing import Any

from . import protocol as P

MAX_ANSWER = 1 << 34                     # the relay bounds answers by eval.max_mb


class ModelError(Exception):
    """The model's answer was refused or it failed; `status` is crash or invalid."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


class Model:
    """model(inputs, expect=None) -> outputs, over the relay."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._w = os.fdopen(os.dup(1), "wb", buffering=0)
        self._r = os.fdopen(os.dup(0), "rb", buffering=0)
        os.dup2(2, 1)                                   # print() goes to the eval log, never into the channel
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        self.requests = 0

    def __call__(self, inputs: dict[str, Any], expect: dict[str, tuple[tuple, str]] | None = None) -> dict[str, Any]:
        """The model's outputs for a batch; `expect` maps output names to (shape, dtype), None in a
        shape for any size (the batch dimension is always checked by the relay)."""
        P.write_all(self._w, P.arrays(P.ARRAYS_IN, inputs))
        tag = P.read_exact(self._r, 4)
        if tag in (P.FAILED, P.REFUSED):
            raise ModelError("crash" if tag == P.FAILED else "invalid", P.read_message_body(self._r))
        if tag != P.ARRAYS_OUT:
            raise ModelError("invalid", f"the relay sent {tag!r}")
        out = P.read_arrays(self._r, MAX_ANSWER)
        self.requests += 1
        for name, (shape, dtype) in (expect or {}).items():
            a = out.get(name)
            if a is None or a.dtype != dtype or len(a.shape) != len(shape) \
                    or any(want is not None and got != want for got, want in zip(a.shape, shape)):
                # the model's shape is never quoted: its numbers could carry held-out inputs to the agent
                why = f"the model's output {name!r} is {'missing' if a is None else 'another dtype or shape'}, the " \
                      f"eval script expects {dtype}{list(shape)}"
                P.write_all(self._w, P.message(P.REFUSED, why))      # the relay records the verdict
                raise ModelError("invalid", why)
        return out


model = Model()
