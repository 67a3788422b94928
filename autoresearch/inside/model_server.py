"""The EVAL model server: agent code answers fixed-shape requests with logits, nothing more.

    python -I .../run/startup.py module autoresearch.inside.model_server --project P --checkpoint OUT/model.pt

Runs inside the EVAL sandbox with no data mounted. Its sandbox starts with TRAIN: the trusted
warm-up (startup.py: interpreter, torch; -I, so no agent file is on the path) runs while TRAIN
trains, then it waits for the scorer's GO, which comes only after TRAIN has ended and its
checkpoint is final (or never: the scorer hangs up and the server exits). Only then does it say
protocol.AGENT_STARTS (eval_seconds counts from there) and import agent code: the agent's train script,
calls build_model(), loads the checkpoint with torch.load(weights_only=True), puts the model
in eval mode once, says READY, and then answers each request (a batch of uint8 windows) with
the model's logits (autoresearch.inside.protocol). It never sees a validation file, a target beyond
its inputs, the loss, or the result: the trusted scorer in the runner holds those.

This process runs agent code, so nothing in it is trusted: the scorer checks every answer
(shape, finiteness, and hidden causality / batch-independence / determinism checks mixed
into the requests). fd 1 is moved to a private descriptor before agent code is imported and
fd 1 then points at stderr, so whatever train.py prints goes to the human-only EVAL log and
cannot corrupt the protocol by accident (on purpose it only makes the run invalid).
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


class Failed(Exception):
    """Agent code failed; the message is the one-line reason (status crash)."""


class Refused(Exception):
    """The input is refused (status invalid), e.g. a checkpoint that is not plain tensors."""


def import_file(project: Path, rel: str):
    """The agent's file `rel` imported as a module under its stem (Failed, with the reason, when
    it cannot be: its traceback goes to the human-only log)."""
    import importlib.util
    path = project / rel
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise Failed(f"cannot import {rel}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    except Failed:
        raise
    except Exception as e:
        traceback.print_exc()
        raise Failed(f"importing {rel} failed: {type(e).__name__}: {e}") from None
    return module


def import_path(project: Path, script: str, roots: list[str]) -> None:
    """What `python <script>` would see, and the human's run.source_roots: the script's own folder
    first (a flat `from utils import ...` beside it works), then each root, then the project. Only
    folders inside the project; PYTHONPATH itself is the harness's."""
    found = [project / Path(script).parent, *(project / r for r in roots), project]
    for p in reversed(list(dict.fromkeys(Path(os.path.normpath(p)) for p in found))):
        if p == project or project in p.parents:        # normalised, not resolved: a linked folder counts
            sys.path.insert(0, str(p))


def load(args: argparse.Namespace):
    """(model, torch, device description): the agent's model, in eval mode, on the device."""
    project = Path(args.project).resolve()
    import_path(project, args.script, args.source_root)
    import torch
    torch_load = torch.load                              # bound before agent code can rebind it
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    desc = f"cuda:0 ({torch.cuda.get_device_name(0)})" if device == "cuda" else "cpu"

    module = import_file(project, args.script)
    build = getattr(module, "build_model", None)
    if not callable(build):
        raise Failed(f"{args.script} has no build_model() for the evaluator to call")
    try:
        model = build()
    except Exception as e:
        traceback.print_exc()
        raise Failed(f"build_model() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise Failed(f"build_model() returned {type(model).__name__}, not a torch.nn.Module")
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise Failed(f"{args.script} saved no checkpoint: expected $AUTORESEARCH_OUT/{ckpt.name}")
    try:
        state = torch_load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Refused(f"the checkpoint is not a plain state_dict of tensors (torch.load weights_only refused it: "
                      f"{first[:200]})") from None
    if not isinstance(state, dict):
        raise Refused(f"the checkpoint holds a {type(state).__name__}, not a state_dict; save model.state_dict()")
    try:
        torch.nn.Module.load_state_dict(model, state, strict=True)
        model = model.to(device)
    except Exception as e:
        raise Failed(f"the checkpoint does not fit build_model(): {str(e).strip().splitlines()[0][:300]}") from None
    torch.nn.Module.train(model, False)                  # eval mode, once, for every request alike
    for m in model.modules():
        m.training = False
    return model, torch, device, desc


def serve(model, torch, device: str, vocab: int, rfile, wfile) -> None:
    """Answer requests until the scorer closes the stream."""
    import time
    n, t_model, t_send = 0, 0.0, 0.0
    while (req := P.read_request(rfile)) is not None:
        t0 = time.monotonic()
        b, t, raw = req
        x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(b, t).to(device=device, dtype=torch.long)
        try:
            with torch.no_grad():
                out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            if tuple(out.shape) != (b, t, vocab):
                raise Failed(f"the model returned logits of shape {tuple(out.shape)}, expected {(b, t, vocab)}")
            if out.dtype == torch.float16:
                tag, arr = P.LOGITS_F16, out.detach().cpu().contiguous()
            else:
                tag, arr = P.LOGITS_F32, out.detach().float().cpu().contiguous()
            data = arr.numpy().tobytes()
        except Failed:
            raise
        except Exception as e:
            traceback.print_exc()
            raise Failed(f"the model failed during evaluation: {type(e).__name__}: {e}") from None
        t1 = time.monotonic()
        P.write_all(wfile, tag)
        P.write_all(wfile, data)
        n, t_model, t_send = n + 1, t_model + t1 - t0, t_send + time.monotonic() - t1
    print(f"model_server: answered {n} requests: model {t_model:.3f} s, sending {t_send:.3f} s",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Answer the trusted scorer's requests with the agent model's logits.")
    ap.add_argument("--project", required=True, help="the project folder (prepare.py and the train script)")
    ap.add_argument("--script", default="train.py", help="the agent's training file, relative to --project")
    ap.add_argument("--source-root", action="append", default=[], help="a project folder to import from "
                    "(run.source_roots)")
    ap.add_argument("--checkpoint", required=True, help="the TRAIN stage's model.pt")
    ap.add_argument("--vocab", type=int, required=True, help="logits per position (prepare.VOCAB_SIZE)")
    args = ap.parse_args(argv)

    def body(rfile: BinaryIO, wfile: BinaryIO) -> None:
        if not P.wait_go(rfile):                         # TRAIN did not end ok: no agent code runs at all
            os._exit(0)
        print(f"\n{P.AGENT_STARTS}", file=sys.stderr, flush=True)
        model, torch, device, desc = load(args)
        P.write_all(wfile, P.message(P.READY, json.dumps({"device": desc})))
        serve(model, torch, device, args.vocab, rfile, wfile)

    P.serve_main("model_server", body, {Refused: P.REFUSED, Failed: P.FAILED})
    return 0


if __name__ == "__main__":
    P.run_server(main)
