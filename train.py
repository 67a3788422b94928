"""
The editable baseline: a small byte-level GPT trained for a fixed time budget.

The agent edits this file. The harness runs it inside a sandbox with
AUTORESEARCH_TRAIN_SECONDS, AUTORESEARCH_SEED and AUTORESEARCH_OUT set. The budget
is this file's compute: its clock starts when this file starts (the harness has
imported torch before), and the harness kills it from outside a few percent
after the budget, time enough to save; then it scores the
checkpoint in another process, with a trusted scorer that this file never
sees. This file never computes the official metric; what it prints is
progress for humans.

Contract with the evaluator: `build_model()` returns the nn.Module for the
constants below, and training saves its state_dict to $AUTORESEARCH_OUT/model.pt.
The model maps (B, CONTEXT_LEN) bytes to (B, CONTEXT_LEN, VOCAB_SIZE) logits.
"""
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import CONTEXT_LEN, VOCAB_SIZE, load_split

STARTED = time.time()        # the budget counts from here (the harness imported torch before): set-up and saving are in it

# ---------------------------------------------------------------------------
# Hyperparameters (edit these)

N_LAYER = 2                 # transformer blocks
N_HEAD = 4                  # attention heads per block (N_EMBD must divide by it)
N_EMBD = 64                 # width of the residual stream, in channels
MLP_RATIO = 4               # MLP hidden width, as a multiple of N_EMBD
DROPOUT = 0.0               # probability, in attention and after each sub-layer (training only)
BATCH_SIZE = 16             # sequences of CONTEXT_LEN bytes per optimiser step
LEARNING_RATE = 3e-3        # peak AdamW learning rate
WEIGHT_DECAY = 0.01         # AdamW decoupled weight decay, on matrices only
BETAS = (0.9, 0.95)         # AdamW moment decay rates
WARMUP_FRACTION = 0.03      # of the time budget, linear warmup from 0
FINAL_LR_FRACTION = 0.05    # the LR decays (cosine) to this fraction of the peak
GRAD_CLIP = 1.0             # max global gradient L2 norm
USE_COMPILE = False         # torch.compile on CUDA (slower start-up, faster steps)
SAVE_MARGIN = 0.02          # fraction of the budget kept at the end to save the checkpoint
LOG_EVERY_SECONDS = 10      # seconds between progress lines

# The values above are the CPU model (133k parameters). On CUDA these replace them (edit them there
# for a GPU run): about 57M parameters, sized to fill a modern GPU (an H100) in a 300 s budget.
CPU_MODEL = dict(N_LAYER=N_LAYER, N_HEAD=N_HEAD, N_EMBD=N_EMBD, BATCH_SIZE=BATCH_SIZE, LEARNING_RATE=LEARNING_RATE)
GPU_MODEL = dict(N_LAYER=8, N_HEAD=12, N_EMBD=768, BATCH_SIZE=128, LEARNING_RATE=6e-4)


def model_config(cuda):
    """The model for a device class. The evaluator imports this file on the device class training
    used (the model servers share the run's GPUs), so build_model() fits the checkpoint."""
    return GPU_MODEL if cuda else CPU_MODEL


_MODEL = model_config(torch.cuda.is_available())
N_LAYER, N_HEAD, N_EMBD = _MODEL["N_LAYER"], _MODEL["N_HEAD"], _MODEL["N_EMBD"]
BATCH_SIZE, LEARNING_RATE = _MODEL["BATCH_SIZE"], _MODEL["LEARNING_RATE"]

# ---------------------------------------------------------------------------
# Given by the harness (do not edit: the harness decides these)

TRAIN_SECONDS = float(os.environ.get("AUTORESEARCH_TRAIN_SECONDS", "300"))
SEED = int(os.environ.get("AUTORESEARCH_SEED", "0"))
OUT_DIR = os.environ.get("AUTORESEARCH_OUT", "out")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# ---------------------------------------------------------------------------
# Model


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t sees only positions <= t."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.proj = nn.Linear(N_EMBD, N_EMBD)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=DROPOUT if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_EMBD, MLP_RATIO * N_EMBD)
        self.proj = nn.Linear(MLP_RATIO * N_EMBD, N_EMBD)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(N_EMBD)
        self.attn = CausalSelfAttention()
        self.ln2 = nn.LayerNorm(N_EMBD)
        self.mlp = MLP()
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE, N_EMBD)
        self.pos = nn.Embedding(CONTEXT_LEN, N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.head = nn.Linear(N_EMBD, VOCAB_SIZE, bias=False)
        self.head.weight = self.tok.weight   # weight tying
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        T = idx.size(1)
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build_model():
    """The evaluator calls this to rebuild the model before loading the checkpoint."""
    return GPT()


# ---------------------------------------------------------------------------
# Training

def lr_at(progress):
    """Warmup then cosine decay, on the fraction of the time budget used."""
    if progress < WARMUP_FRACTION:
        return LEARNING_RATE * progress / WARMUP_FRACTION
    p = min(1.0, (progress - WARMUP_FRACTION) / (1 - WARMUP_FRACTION))
    return LEARNING_RATE * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * p)))


def get_batch(data, gen):
    ix = torch.randint(len(data) - CONTEXT_LEN - 1, (BATCH_SIZE,), generator=gen)
    x = torch.stack([data[i:i + CONTEXT_LEN] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + CONTEXT_LEN] for i in ix])
    return x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)


def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    data = torch.from_numpy(load_split("train").astype("int64"))
    model = build_model().to(DEVICE)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {DEVICE} | params {n_params:,} | train bytes {len(data):,} | budget {TRAIN_SECONDS:.0f}s | seed {SEED}")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LEARNING_RATE, betas=BETAS, fused=DEVICE == "cuda")
    fwd = torch.compile(model) if USE_COMPILE and DEVICE == "cuda" else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE == "cuda" else torch.autocast("cpu", enabled=False)

    t0 = time.time()
    stop_at = STARTED + TRAIN_SECONDS * (1 - SAVE_MARGIN) - t0     # seconds of training left after set-up
    step, last_log, smooth, step_s = 0, t0, None, 0.0
    model.train()
    while True:
        elapsed = time.time() - t0
        if elapsed + step_s >= stop_at:               # the next step would end past the budget
            break
        lr = lr_at(elapsed / stop_at)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(data, gen)
        with amp:
            logits = fwd(x)
            loss = F.cross_entropy(logits.float().view(-1, VOCAB_SIZE), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        step += 1
        step_s = max(0.9 * step_s, time.time() - t0 - elapsed)   # a slow step counts at once, then fades
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if time.time() - last_log >= LOG_EVERY_SECONDS:
            last_log = time.time()
            tok_s = step * BATCH_SIZE * CONTEXT_LEN / (last_log - t0)
            print(f"step {step:6d} | {elapsed:6.1f}s | lr {lr:.2e} | train loss {smooth:.3f} "
                  f"({smooth / math.log(2):.3f} bits) | {tok_s:,.0f} tok/s", flush=True)

    os.makedirs(OUT_DIR, exist_ok=True)
    tmp = os.path.join(OUT_DIR, "model.pt.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, os.path.join(OUT_DIR, "model.pt"))
    dt = time.time() - t0
    print(f"done: {step} steps in {dt:.1f}s ({step / dt:.1f} steps/s, {step * BATCH_SIZE * CONTEXT_LEN / dt:,.0f} tok/s); "
          f"checkpoint saved to {OUT_DIR}/model.pt")


if __name__ == "__main__":
    main()
