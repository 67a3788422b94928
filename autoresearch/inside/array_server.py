"""The evaluator split's model server: agent code answers model(inputs) -> outputs, nothing more.

    python -I .../run/startup.py module autoresearch.inside.array_server --project P --entry model.py:load --out OUT

Runs inside its own sandbox, behind the trusted warm-up (startup.py: interpreter, torch; -I, so no
agent file is on the path), which runs while TRAIN trains; it imports agent code only after the
relay's GO (TRAIN ended ok and its checkpoint is final; protocol.AGENT_STARTS, and eval_seconds,
count from then). No data mounted, no network, the project and the TRAIN checkpoint folder (OUT)
read-only. It imports the agent's module, calls load(OUT) once, which returns
predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray], says READY, then answers each
ARRAYS request of the host relay (autoresearch.inside.protocol) with predict's outputs. It never sees
a label, the metric, or the metric file: the human's eval script, in another sandbox, holds them.

Nothing here is trusted: the relay checks every answer (names, batch dimension, dtypes, finite,
size) and re-asks a second server instance (eval.checks). fd 1 is private before agent code is
imported; what agent code prints goes to stderr, the human-only eval log.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import BinaryIO
from pathlib import Path

from . import protocol as P
from .model_server import Failed, import_file, import_path

MAX_REQUEST = 1 << 34                 # the relay bounds requests by eval.max_mb; this only guards a broken pipe


def load(project: Path, entry: str, out: str, roots: list[str] | None = None):
    """predict, from `entry` (file.py:function) called with the checkpoint folder."""
    rel, _, func = entry.partition(":")
    import_path(project, rel, roots or [])
    module = import_file(project, rel)
    factory = getattr(module, func, None)
    if not callable(factory):
        raise Failed(f"{rel} has no function {func}(out_dir) for the evaluator to call (eval.model: {entry})")
    try:
        predict = factory(out)
    except Exception as e:
        traceback.print_exc()
        raise Failed(f"{entry}({out!r}) failed: {type(e).__name__}: {e}") from None
    if not callable(predict):
        raise Failed(f"{entry}(out_dir) returned {type(predict).__name__}, not a predict(inputs) function")
    return predict


def _numpy(v):
    """A tensor or array-like as a numpy array (torch tensors leave the device here)."""
    import numpy as np
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def serve(predict, rfile, wfile) -> None:
    """Answer requests until the relay closes the stream."""
    n = 0
    while tag := rfile.read(4):
        if tag != P.ARRAYS_IN:
            raise P.ProtocolError(f"unknown request tag {tag!r}")
        inputs = P.read_arrays(rfile, MAX_REQUEST)
        try:
            out = predict(inputs)
            if not isinstance(out, dict):
                raise Failed(f"predict returned {type(out).__name__}, not a dict of named arrays")
            frame = P.arrays(P.ARRAYS_OUT, {k: _numpy(v) for k, v in out.items()})
        except Failed:
            raise
        except Exception as e:
            traceback.print_exc()
            raise Failed(f"the model failed during evaluation: {type(e).__name__}: {e}") from None
        P.write_all(wfile, frame)
        n += 1
    print(f"array_server: answered {n} requests", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Answer the relay's requests with the agent model's outputs.")
    ap.add_argument("--project", required=True)
    ap.add_argument("--entry", required=True, help="file.py:function, called with --out, returning predict")
    ap.add_argument("--out", required=True, help="the TRAIN checkpoint folder")
    ap.add_argument("--source-root", action="append", default=[], help="a project folder to import from "
                    "(run.source_roots)")
    args = ap.parse_args(argv)

    def body(rfile: BinaryIO, wfile: BinaryIO) -> None:
        if not P.wait_go(rfile):                         # TRAIN did not end ok: no agent code runs at all
            os._exit(0)
        print(f"\n{P.AGENT_STARTS}", file=sys.stderr, flush=True)
        predict = load(Path(args.project).resolve(), args.entry, args.out, args.source_root)
        P.write_all(wfile, P.message(P.READY, json.dumps({"entry": args.entry})))
        serve(predict, rfile, wfile)

    P.serve_main("array_server", body, {Failed: P.FAILED})
    return 0


if __name__ == "__main__":
    P.run_server(main)
