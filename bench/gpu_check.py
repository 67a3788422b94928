"""The prepared GPU check (issue 27): one table of what the CUDA path does on this machine.

    bench/gpu_check.sh [--dry-run] [--budget 60]

Rows, each `ok`, `skipped: why` or `FAILED: why`:
  train.py config      CPU side, always: train.py's model_config() gives the small model on CPU and
                       the ~50M one on CUDA, and the module took the one for this device class
  CUDA baseline        train.py run directly for --budget seconds: tokens/s and model FLOPs
                       utilisation (6N + 12·L·C·T FLOPs a token, against the card's dense bf16 peak)
  passthrough <name>   each available sandbox backend (bwrap, docker) with sandbox.gpus all: the
                       GPUs are visible and compute inside, and the network is not reachable
  torchrun 2 ranks     with 2+ GPUs: an NCCL all_reduce across 2 ranks on 2 GPUs
  wave                 bench_waves.py with one slot per GPU, one run each: the fraction of the ideal

Without CUDA (or with --dry-run) every GPU row is "skipped: no CUDA device" and only the CPU-side
check runs, so CI runs this in a few seconds. The whole check stays under 8 minutes: each step has
its own timeout. The exit status is 1 when a row FAILED.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NO_DEVICE = "no CUDA device"
BACKENDS = ("bwrap", "docker")
# Dense bf16 peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
             ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12))


@dataclass
class Row:
    check: str
    status: str          # "ok" | "skipped: why" | "FAILED: why"
    detail: str = ""


def ok(check: str, detail: str) -> Row:
    return Row(check, "ok", detail)


def skipped(check: str, why: str) -> Row:
    return Row(check, f"skipped: {why}")


def failed(check: str, why: str) -> Row:
    return Row(check, f"FAILED: {why}")


def cuda_devices() -> int:
    """How many CUDA devices torch sees here; 0 without nvidia-smi (no driver: don't even ask torch)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---------------------------------------------------------------------------------------------
# The rows

def check_config(cuda: bool) -> Row:
    """train.py picks its model by device class, through model_config(), at import."""
    name = "train.py config"
    try:
        import train
        cpu, gpu = train.model_config(False), train.model_config(True)
        took = {k: getattr(train, k) for k in cpu}
        want = gpu if cuda else cpu
        if took != want:
            return failed(name, f"train.py took {took} on {'CUDA' if cuda else 'CPU'}, model_config gives {want}")
        n_cpu, n_gpu = params(cpu, train), params(gpu, train)
        if not (n_cpu < 1e6 and 30e6 <= n_gpu <= 150e6):
            return failed(name, f"CPU model {n_cpu:,} params (want < 1M), GPU model {n_gpu:,} (want 30M-150M)")
        built = sum(p.numel() for p in train.build_model().parameters())
        if built != (n_gpu if cuda else n_cpu):
            return failed(name, f"build_model() has {built:,} params, the config says {n_gpu if cuda else n_cpu:,}")
        return ok(name, f"{'CUDA' if cuda else 'CPU'} model chosen; CPU {n_cpu:,} params, CUDA {n_gpu:,} params")
    except Exception as e:   # noqa: BLE001 -- a row, not a crash
        return failed(name, f"{type(e).__name__}: {e}")


def params(cfg: dict, train) -> int:
    """Parameters of train.py's GPT for a config (tied head; biases and LayerNorms counted)."""
    L, C, r = cfg["N_LAYER"], cfg["N_EMBD"], train.MLP_RATIO
    block = (C * 3 * C + 3 * C) + (C * C + C) + (C * r * C + r * C) + (r * C * C + C) + 4 * C
    return train.VOCAB_SIZE * C + train.CONTEXT_LEN * C + L * block + 2 * C


def check_baseline(budget: float, data: Path) -> Row:
    name = f"CUDA baseline ({budget:.0f} s)"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
        env = dict(os.environ, AUTORESEARCH_TRAIN_SECONDS=str(budget), AUTORESEARCH_SEED="0",
                   AUTORESEARCH_OUT=out, AUTORESEARCH_DATA=str(data), PYTHONPATH=str(ROOT))
        try:
            p = subprocess.run([sys.executable, str(ROOT / "train.py")], cwd=out, env=env, capture_output=True,
                               text=True, timeout=budget + 60)
        except subprocess.TimeoutExpired:
            return failed(name, f"train.py still running {budget + 60:.0f} s after it started")
    if p.returncode != 0:
        return failed(name, f"train.py exited {p.returncode}: {tail(p.stderr)}")
    m = re.search(r"done: (\d+) steps in ([\d.]+)s \(.*?([\d,]+) tok/s\)", p.stdout)
    if not m or "device cuda" not in p.stdout:
        return failed(name, f"train.py did not train on CUDA: {tail(p.stdout)}")
    tok_s = float(m.group(3).replace(",", ""))
    import torch
    import train
    gpu = train.model_config(True)
    L, C, T = gpu["N_LAYER"], gpu["N_EMBD"], train.CONTEXT_LEN
    flops_per_token = 6 * params(gpu, train) + 12 * L * C * T
    card = torch.cuda.get_device_name(0)
    peak = next((f for key, f in PEAK_BF16 if key in card), None)
    mfu = f"MFU {tok_s * flops_per_token / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else f"MFU n/a (no peak known for {card})"
    return ok(name, f"{card}: {tok_s:,.0f} tokens/s, {mfu}, {m.group(1)} steps")


_INSIDE = """
import json, socket, torch
n = torch.cuda.device_count()
y = (torch.ones(256, 256, device="cuda") @ torch.ones(256, 256, device="cuda")).sum().item() if n else None
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close(); net = "reachable"
except OSError as e:
    net = type(e).__name__
print(json.dumps({"gpus": n, "matmul": y, "net": net}))
"""


def check_passthrough(backend_name: str, n_host: int) -> Row:
    name = f"passthrough {backend_name}"
    from autoresearch.sandbox import SandboxSpec, backend_named
    try:
        b = backend_named(backend_name)
        available, why = b.available()
        if not available:
            return skipped(name, why.splitlines()[0][:100])
        rt = b.runtime()
        r = b.run(SandboxSpec(argv=[rt.python, "-c", textwrap.dedent(_INSIDE)], mounts=rt.mounts, env=dict(rt.env),
                              cwd="/tmp", timeout_s=60, memory_bytes=8 << 30, gpus="all", capture_stdout=True))
    except Exception as e:   # noqa: BLE001
        return failed(name, f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
    if r.exit_code != 0:
        return failed(name, f"exit {r.exit_code}{' (timed out)' if r.timed_out else ''}: {tail(r.stdout.decode(errors='replace'))}")
    got = json.loads(r.stdout.decode().strip().splitlines()[-1])
    if got["gpus"] != n_host or got["matmul"] != 256.0 * 256 * 256:
        return failed(name, f"{got['gpus']} of {n_host} GPU(s) visible inside, matmul {got['matmul']}, network: {got['net']}")
    if got["net"] == "reachable":
        return failed(name, "the network is reachable inside the sandbox")
    return ok(name, f"{got['gpus']} GPU(s) visible and computing inside; network: {got['net']}")


_RANK = """
import os, torch, torch.distributed as dist
dist.init_process_group("nccl")
rank = dist.get_rank(); torch.cuda.set_device(rank)
t = torch.full((1,), float(rank + 1), device="cuda"); dist.all_reduce(t)
assert t.item() == 3.0, t.item()
if rank == 0: print("allreduce ok", dist.get_world_size())
dist.destroy_process_group()
"""


def check_torchrun(n_host: int) -> Row:
    name = "torchrun 2 ranks"
    if n_host < 2:
        return skipped(name, f"{n_host} GPU: needs 2")
    torchrun = Path(sys.executable).with_name("torchrun")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(textwrap.dedent(_RANK))
    try:
        p = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", f.name],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return failed(name, "no result in 60 s")
    finally:
        os.unlink(f.name)
    if p.returncode != 0 or "allreduce ok 2" not in p.stdout:
        return failed(name, f"exit {p.returncode}: {tail(p.stderr)}")
    return ok(name, "NCCL all_reduce across 2 ranks on 2 GPUs")


def check_wave(n_host: int, backend: str | None, budget: float) -> Row:
    name = "wave, 1 slot per GPU"
    if backend is None:
        return skipped(name, "no sandbox backend available")
    cmd = [sys.executable, str(ROOT / "bench" / "bench_waves.py"), "--slots", str(n_host), "--runs", str(n_host),
           "--budget", str(budget), "--backend", backend]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 150)
    except subprocess.TimeoutExpired:
        return failed(name, f"no decision in {budget + 150:.0f} s")
    m = re.search(r"^\{$.*^\}$", p.stdout, re.S | re.M)      # the JSON it prints last (indent=2)
    if p.returncode != 0 or not m:
        return failed(name, f"bench_waves exited {p.returncode}: {tail(p.stderr)}")
    w = json.loads(m.group(0))
    if w["decided"] < n_host:
        return failed(name, f"{w['decided']} of {n_host} runs decided")
    return ok(name, f"{n_host} slot(s), {backend}, budget {budget:.0f} s: {w['fraction_of_ideal']:.3f} of the ideal, {w['wall_s']} s wall")


def tail(text: str, n: int = 160) -> str:
    return " ".join(text.strip().splitlines()[-2:])[-n:] or "(no output)"


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="skip every GPU row (automatic without CUDA)")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of the CUDA baseline's training")
    ap.add_argument("--wave-budget", type=float, default=30.0, help="seconds of training per run in the wave")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    n = 0 if args.dry_run else cuda_devices()
    rows = [check_config(cuda=n > 0)]
    gpu_rows = [f"CUDA baseline ({args.budget:.0f} s)", *(f"passthrough {b}" for b in BACKENDS),
                "torchrun 2 ranks", "wave, 1 slot per GPU"]
    if n == 0:
        rows += [skipped(r, NO_DEVICE) for r in gpu_rows]
    else:
        import prepare
        try:
            data = prepare.prepare()
            rows.append(check_baseline(args.budget, data))
        except Exception as e:   # noqa: BLE001
            rows.append(failed(gpu_rows[0], f"no data ({type(e).__name__}: {e}); run `python prepare.py` first"))
        rows += [check_passthrough(b, n) for b in BACKENDS]
        rows.append(check_torchrun(n))
        works = next((r.check.split()[-1] for r in rows if r.check.startswith("passthrough") and r.status == "ok"), None)
        rows.append(check_wave(n, works, args.wave_budget))

    w = max(len(r.check) for r in rows)
    print(f"GPU check ({n} CUDA device(s), {time.monotonic() - t0:.0f} s)")
    print(f"{'check':<{w}} | result")
    print(f"{'-' * w}-+-{'-' * 40}")
    for r in rows:
        print(f"{r.check:<{w}} | {r.status}{' | ' + r.detail if r.detail else ''}")
    return 1 if any(r.status.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
