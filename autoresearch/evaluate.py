"""The EVAL stage program: score a TRAIN-stage checkpoint with the trusted evaluator.

    python -m autoresearch.evaluate --project P --checkpoint OUT/model.pt  < nonce + val bytes

It runs in its own sandbox, with no data mounted: the harness sends a nonce line and
then the validation bytes on stdin, and this program reads them all before any agent
code is imported. Agent code (train.py's `build_model()` and the model's forward)
runs in this process, so the order matters:

1. read stdin; move fd 1 to a private descriptor and point fd 1 at stderr, so
   nothing train.py prints can reach the result channel;
2. import torch and the project's prepare.py, bind the evaluator, build the
   validation windows, snapshot what agent code could patch;
3. import train.py, build the model, load the checkpoint with weights_only=True,
   restoring the snapshot after each step that ran agent code;
4. check the model in eval mode is deterministic and causal (within a sequence
   and across the batch), then score; anything patched while scoring -> invalid;
5. sanity: finite, not past metric.floor, every byte scored.

The result is one JSON line on the private descriptor carrying the nonce, then
os._exit (agent atexit handlers never run). Exit code 0 means a result was
written, whatever its status: ok, invalid (an integrity refusal) or crash (agent
code raised). This guards against an optimising agent's shortcuts, not against
model code written to attack this process; see README "Threat model".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

NONCE_BYTES = 32  # hex characters on the first stdin line


class Refused(Exception):
    """The evaluation is refused: status invalid, the message is the one-line reason."""


class AgentError(Exception):
    """Agent code failed (import, build, forward): status crash."""


def _take_private_stdout() -> int:
    """Return a private, non-inheritable copy of fd 1 and point fd 1 at stderr."""
    sys.stdout.flush()
    private = os.dup(1)                # os.dup: close-on-exec, so child processes never get it
    os.dup2(2, 1)
    return private


def _read_stdin() -> tuple[str, bytes]:
    raw = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    nonce, sep, rest = raw.partition(b"\n")
    if not sep or len(nonce) != NONCE_BYTES:
        raise SystemExit("evaluate: stdin must be a nonce line followed by the validation bytes")
    return nonce.decode("ascii"), rest


class Snapshot:
    """What agent code could patch to change the score: module and class attributes, sys.modules entries."""

    def __init__(self, modules: dict[str, object], classes: list[type]):
        self.modules = {name: (mod, dict(vars(mod))) for name, mod in modules.items()}
        self.classes = [(cls, dict(vars(cls))) for cls in classes]

    def changed(self) -> list[str]:
        out = []
        for name, (mod, saved) in self.modules.items():
            if sys.modules.get(name) is not mod:
                out.append(f"sys.modules[{name!r}]")
            now = vars(mod)
            out += [f"{name}.{k}" for k, v in saved.items() if now.get(k, _MISSING) is not v]
        for cls, saved in self.classes:
            out += [f"{cls.__name__}.{k}" for k in self._class_changes(cls, saved)]
        return sorted(out)

    @staticmethod
    def _class_changes(cls: type, saved: dict) -> list[str]:
        """Changed or deleted attributes, and added ones that override a base class's
        (torch.Tensor.float shadowing TensorBase.float); a brand-new helper is harmless."""
        now = dict(vars(cls))
        changed = [k for k, v in saved.items() if now.get(k, _MISSING) is not v]
        added = [k for k in now.keys() - saved.keys() if any(k in vars(b) for b in cls.__mro__[1:])]
        return changed + added

    def restore(self) -> list[str]:
        """Put every guarded attribute back; return what had been changed."""
        changed = self.changed()
        for name, (mod, saved) in self.modules.items():
            sys.modules[name] = mod          # type: ignore[assignment]
            now = vars(mod)
            for k, v in saved.items():
                if now.get(k, _MISSING) is not v:
                    now[k] = v
        for cls, saved in self.classes:
            for k in self._class_changes(cls, saved):
                if k in saved:
                    setattr(cls, k, saved[k])
                else:
                    delattr(cls, k)
        return changed


_MISSING = object()


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


def probe(model, x, torch, vocab: int, seed: int = 1234) -> None:
    """Refuse a model whose outputs change between identical calls, look ahead, or mix sequences.

    x: (B, T) windows of real validation text. Replacement tokens come from other windows,
    so the probe looks like ordinary input."""
    gen = torch.Generator().manual_seed(seed)
    B, T = x.shape
    pool = x.flatten()

    def other(shape):
        return pool[torch.randint(pool.numel(), shape, generator=gen)].to(x.device)

    def run(inp):
        out = _logits(model(inp)).float()
        if out.shape != (*inp.shape, vocab):
            raise AgentError(f"the model returned logits of shape {tuple(out.shape)}, expected {(*inp.shape, vocab)}")
        return out

    with torch.no_grad():
        base = run(x)
        tol = 1e-4 * max(1.0, float(base.abs().max()))
        if not torch.isfinite(base).all():
            raise Refused("the model's logits contain NaN or inf")
        if float((run(x) - base).abs().max()) > tol:
            raise Refused("the model's output is not deterministic in eval mode (dropout or randomness left on?)")
        positions = sorted({0, T - 2, *torch.randint(1, T - 1, (3,), generator=gen).tolist()})
        for t in positions:
            x2 = x.clone()
            x2[:, t + 1:] = other((B, T - t - 1))
            diff = float((run(x2)[:, : t + 1] - base[:, : t + 1]).abs().max())
            if diff > tol:
                raise Refused(f"the model attends to future tokens: the logits at position {t} changed by "
                              f"{diff:.3g} when only later bytes changed; keep attention causal")
        if B > 1:
            x3 = x.clone()
            x3[1:] = other((B - 1, T))
            diff = float((run(x3)[0] - base[0]).abs().max())
            if diff > tol:
                raise Refused(f"the model mixes sequences in a batch: one sequence's logits changed by {diff:.3g} "
                              f"when only the other sequences changed")


def _device(torch) -> tuple[str, str]:
    """(torch device, description). CUDA_VISIBLE_DEVICES is honoured by torch itself."""
    if torch.cuda.is_available():
        return "cuda", f"cuda:0 ({torch.cuda.get_device_name(0)})"
    return "cpu", "cpu"


def evaluate(args: argparse.Namespace, val: bytes, log) -> dict:
    """Everything after stdin is read. Returns the result fields (without the nonce)."""
    t0 = time.monotonic()
    project = Path(args.project).resolve()
    sys.path.insert(0, str(project))
    import builtins
    import math
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F

    import prepare                                    # the project's trusted evaluator

    # 2. bind the evaluator and the data before agent code exists
    evaluate_bpb, eval_windows = prepare.evaluate_bpb, prepare.eval_windows
    EVAL_BYTES, VOCAB_SIZE, EVAL_BATCH = prepare.EVAL_BYTES, prepare.VOCAB_SIZE, prepare.EVAL_BATCH
    data = np.frombuffer(val, dtype=np.uint8).copy()
    del val
    try:
        x, _ = eval_windows(data)
    except prepare.DataError as e:
        raise Refused(f"the validation data is too short: {e}") from None
    device, device_desc = _device(torch)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    # Same kernels for the same shapes every time. Not torch.use_deterministic_algorithms: on
    # CPU it sends attention to a path ~8x slower, and inference needs no atomics-free
    # backward; the probe checks that two identical calls agree anyway.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    guard = Snapshot(
        {"builtins": builtins, "math": math, "prepare": prepare, "torch": torch,
         "torch.nn.functional": F, "numpy": np},
        [torch.Tensor, torch.nn.Module])
    load_module = torch.nn.Module.load_state_dict
    torch_load = torch.load

    def restored(step: str) -> None:
        names = guard.restore()
        if names:
            print(f"evaluate: restored {', '.join(names[:8])}{' ...' if len(names) > 8 else ''} "
                  f"after {step} changed them", file=log, flush=True)

    # 3. agent code: import, build, load
    script = project / args.script
    import importlib.util
    try:
        spec = importlib.util.spec_from_file_location(script.stem, script)
        if spec is None or spec.loader is None:
            raise AgentError(f"cannot import {args.script}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[script.stem] = module
        spec.loader.exec_module(module)
    except Exception as e:
        restored(f"importing {args.script}")
        raise AgentError(f"importing {args.script} failed: {type(e).__name__}: {e}") from e
    restored(f"importing {args.script}")
    build = getattr(module, "build_model", None)
    if not callable(build):
        raise AgentError(f"{args.script} has no build_model() for the evaluator to call")
    try:
        model = build()
    except Exception as e:
        restored("build_model()")
        raise AgentError(f"build_model() failed: {type(e).__name__}: {e}") from e
    restored("build_model()")
    if not isinstance(model, torch.nn.Module):
        raise AgentError(f"build_model() returned {type(model).__name__}, not a torch.nn.Module")

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise AgentError(f"{args.script} saved no checkpoint: expected $AUTORESEARCH_OUT/{ckpt.name}")
    try:
        state = torch_load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Refused(f"the checkpoint is not a plain state_dict of tensors (torch.load weights_only refused it: "
                      f"{first[:200]})") from None
    if not isinstance(state, dict):
        raise Refused(f"the checkpoint holds a {type(state).__name__}, not a state_dict; save model.state_dict()")
    try:
        load_module(model, state, strict=True)
    except Exception as e:
        raise AgentError(f"the checkpoint does not fit build_model(): {str(e).strip().splitlines()[0][:300]}") from e
    restored("loading the checkpoint")
    try:
        model = model.to(device)
    except Exception as e:
        raise AgentError(f"moving the model to {device} failed: {type(e).__name__}: {e}") from e
    torch.nn.Module.train(model, False)                # eval mode without trusting an overridden .eval()
    for m in model.modules():
        m.training = False
    restored("preparing the model")
    t_load = time.monotonic()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # 4. probe, then score
    try:
        probe(model, x[:EVAL_BATCH].to(device), torch, VOCAB_SIZE)
        changed = guard.changed()
        if changed:
            raise Refused(f"the model changed {', '.join(changed[:5])} while it ran; the evaluator must stay as it is")
        t_probe = time.monotonic()
        torch.manual_seed(0)
        bpb, n_bytes = evaluate_bpb(model, data, device)
    except (Refused, AgentError):
        raise
    except Exception as e:
        raise AgentError(f"the model failed during evaluation: {type(e).__name__}: {e}") from e
    changed = guard.changed()
    if changed:
        raise Refused(f"the model changed {', '.join(changed[:5])} while it was scored; the score is void")
    t_score = time.monotonic()

    # 5. sanity
    result = {"device": device_desc, "bytes": int(n_bytes), "value": None,
              "load_seconds": round(t_load - t0, 3), "probe_seconds": round(t_probe - t_load, 3),
              "score_seconds": round(t_score - t_probe, 3)}
    if device == "cuda":
        result["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    if not math.isfinite(bpb):
        raise Refused(f"the loss is {bpb} (NaN or inf)")
    if n_bytes < EVAL_BYTES:
        raise Refused(f"only {n_bytes} bytes were scored, the evaluation needs {EVAL_BYTES}")
    if args.floor is not None:
        past = bpb < args.floor if args.direction == "minimize" else bpb > args.floor
        if past:
            raise Refused(f"{args.metric} {bpb:.4f} is past the physical floor {args.floor} for this corpus: "
                          f"a leak or a bug, not a better model")
    result["value"] = bpb
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score a checkpoint (run by the harness inside the EVAL sandbox).")
    ap.add_argument("--project", required=True, help="the project folder (prepare.py and the train script)")
    ap.add_argument("--script", default="train.py", help="the agent's training file, relative to --project")
    ap.add_argument("--checkpoint", required=True, help="the TRAIN stage's model.pt")
    ap.add_argument("--metric", default="val_bpb")
    ap.add_argument("--direction", choices=["minimize", "maximize"], default="minimize")
    ap.add_argument("--floor", type=float, default=None)
    args = ap.parse_args(argv)

    nonce, val = _read_stdin()
    private = _take_private_stdout()
    log = sys.stderr
    result: dict
    try:
        result = {"status": "ok", **evaluate(args, val, log)}
    except Refused as e:
        result = {"status": "invalid", "reason": str(e)}
    except AgentError as e:
        if e.__cause__ is not None:
            traceback.print_exception(e.__cause__, file=log)
        result = {"status": "crash", "reason": str(e)}
    result["nonce"] = nonce
    print(f"evaluate: {result['status']}" + (f": {result['reason']}" if result.get("reason") else
                                              f" {args.metric} {result.get('value')}"), file=log, flush=True)
    data = (json.dumps(result) + "\n").encode()
    while data:
        data = data[os.write(private, data):]
    sys.stderr.flush()
    os._exit(0)                                         # agent atexit handlers and threads never run


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
