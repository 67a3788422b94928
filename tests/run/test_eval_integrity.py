"""The EVAL stage against deliberate model code (issue 13): agent code runs only in the model
server; the trusted scorer holds the held-out bytes, computes the loss and hides checks
(causality, batch independence, determinism) among the scoring requests.

One honest checkpoint is trained once (module fixture). Each test pairs it (or a crafted
checkpoint) with a train.py variant and runs the real EVAL stage, experiment.run_eval: the
model servers as real processes under every backend (none, bwrap, docker), the scorer in this
process. Every hostile model must end `invalid` (or crash/timeout), or score no better than the
honest one. Issue 24 adds logit shifts and sentinel logits (the checks compare float64 log-softmax
with an absolute tolerance), and, as whole ./run.sh runs, training through the old grace and a
deep hostile folder tree."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiment_support import BACKENDS, HONEST, ROOT, require_backend

from autoresearch.program import load_program
from autoresearch.run.evaluate import run_eval
from autoresearch.record.layout import EVAL_LOG, Layout
from autoresearch.run.outcome import eval_status
from autoresearch.run.specs import StageInputs, base_env
from autoresearch.sandbox import NoneBackend, choose_backend

sys.path.insert(0, str(ROOT))
import prepare  # noqa: E402

FORWARD_END = "        return self.head(self.ln_f(x))"
# every hostile family on every backend: the model server as a plain process, under bwrap, under docker
ALL_BACKENDS = ["none"] + [pytest.param(b.values[0], marks=b.marks, id=b.id) for b in BACKENDS]


def replace_once(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, old
    return code.replace(old, new)


def with_forward(code: str, body: str) -> str:
    """HONEST with the forward's last line replaced: `logits` holds the honest output."""
    return replace_once(code, FORWARD_END, "        logits = self.head(self.ln_f(x))\n" + body)


def with_module_code(code: str, extra: str) -> str:
    anchor = "\nfrom prepare import CONTEXT_LEN, VOCAB_SIZE, load_split\n"
    return replace_once(code, anchor, anchor + extra + "\n")


# Logits at position s made to predict idx[s+1]: what a model that looks ahead would do.
PEEK = '''
def _peek(idx, logits):
    nxt = torch.roll(idx, -1, dims=1)
    bonus = F.one_hot(nxt, VOCAB_SIZE).to(logits.dtype) * 30.0
    bonus[:, -1] = 0
    return logits + bonus
'''


def project(base: Path, name: str, code: str, floor: float | None = None, eval_seconds: float = 120) -> Path:
    proj = base / name
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "prepare.py").write_bytes((ROOT / "prepare.py").read_bytes())
    (proj / "train.py").write_text(code)
    text = (ROOT / "program.md").read_text()
    text = re.sub(r"^(\s*)floor:.*$", (rf"\g<1>floor: {floor}" if floor is not None else ""), text, count=1, flags=re.M)
    text = re.sub(r"^(\s*eval_seconds:).*$", rf"\g<1> {eval_seconds}", text, count=1, flags=re.M)
    (proj / "program.md").write_text(text)
    (proj / "runs" / "0001" / "out").mkdir(parents=True, exist_ok=True)
    (proj / "runs" / "0001" / "train.py").write_text(code)
    return proj


def evaluate(proj: Path, ckpt: Path, split: bytes, tmp: Path | None = None, backend: str = "none") -> SimpleNamespace:
    """The real EVAL stage under `backend`: (status, reason, scorer result, what the model printed)."""
    lay = Layout(proj, proj / "runs" / "0001", "train.py")
    target = lay.out / "model.pt"
    target.unlink(missing_ok=True)
    if ckpt.exists():
        target.write_bytes(ckpt.read_bytes())
    split_file = (tmp or proj) / "split.bin"
    split_file.write_bytes(split)
    program = load_program(proj)
    sandbox = NoneBackend() if backend == "none" else choose_backend(backend)
    log = lay.run_dir / EVAL_LOG
    log.write_text("")
    res, result = run_eval(StageInputs(sandbox, program, lay, base_env(sandbox, lay, str(proj), 0, 0)), split_file, log)
    lay.cleanup()
    status, reason = eval_status(res, result, program)
    return SimpleNamespace(status=status, reason=reason, result=result or {}, printed=log.read_text(errors="replace"),
                           value=(result or {}).get("value") if status == "ok" else None)


@pytest.fixture(scope="module")
def honest(tmp_path_factory, data_dir):
    base = tmp_path_factory.mktemp("eval")
    proj = project(base, "honest", HONEST)
    out = base / "out"
    env = dict(os.environ, AUTORESEARCH_TRAIN_SECONDS="3", AUTORESEARCH_SEED="0", AUTORESEARCH_OUT=str(out),
               AUTORESEARCH_DATA=str(data_dir))
    p = subprocess.run([sys.executable, "train.py"], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    val = (data_dir / "val" / "val.bin").read_bytes()
    first = evaluate(proj, out / "model.pt", val)
    assert first.status == "ok", first
    return SimpleNamespace(proj=proj, ckpt=out / "model.pt", val=val, first=first, value=first.value, base=base)


def run_variant(honest, name: str, code: str, ckpt: Path | None = None, backend: str = "none",
                **program) -> SimpleNamespace:
    return evaluate(project(honest.base, f"{name}-{backend}", code, **program), ckpt or honest.ckpt, honest.val,
                    honest.base, backend)


def not_better(r: SimpleNamespace, honest) -> bool:
    return r.status != "ok" or r.value >= honest.value - 1e-6


# ------------------------------------------------------------------ the honest model

def reference_bpb(proj: Path, ckpt: Path, val: bytes) -> float:
    """The one-process evaluator's number, computed independently here with plain torch:
    consecutive windows, batches of EVAL_BATCH, F.cross_entropy, float64 accumulation."""
    spec = importlib.util.spec_from_file_location("honest_train", proj / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    model = train.build_model()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    n, T = prepare.EVAL_BYTES, prepare.CONTEXT_LEN
    buf = torch.tensor(list(val[: n + 1]), dtype=torch.long)
    x, y = buf[:n].view(-1, T), buf[1:n + 1].view(-1, T)
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.size(0), prepare.EVAL_BATCH):
            logits = model(x[i:i + prepare.EVAL_BATCH]).float()
            total += float(F.cross_entropy(logits.reshape(-1, 256), y[i:i + prepare.EVAL_BATCH].reshape(-1),
                                           reduction="none").double().sum())
    return total / n / np.log(2)


def test_honest_value_equals_the_one_process_evaluators(honest):
    ref = reference_bpb(honest.proj, honest.ckpt, honest.val)
    assert abs(honest.value - ref) < 1e-6, (honest.value, ref)
    assert honest.first.result["bytes"] == prepare.EVAL_BYTES and honest.first.result["device"] == "cpu"
    assert 1.5 < honest.value < 8.5      # a real bpb (under load a 3 s run may barely beat 8 bits/byte)
    again = evaluate(honest.proj, honest.ckpt, honest.val)
    assert again.status == "ok" and abs(again.value - honest.value) < 1e-9, "another random plan, the same number"


def test_checks_are_mixed_into_every_request_and_the_honest_model_passes_them_with_margin(honest):
    r = honest.first.result
    assert r["servers"] == 2 and r["requests"] == 36 and r["check_windows"] == 64, r   # (512 + 64) / 16
    assert r["check_windows"] / (r["requests"] * prepare.EVAL_BATCH) >= 0.10
    assert r["check_max_diff_nats"] < 1e-5, "an honest model sits far inside the 2e-3 nats tolerance"


def test_every_request_has_a_check_answered_by_the_other_server():
    from autoresearch.run.scorer import SERVERS, Plan
    rng = np.random.default_rng(1)
    x, y = prepare.eval_windows(np.frombuffer(bytes(range(256)) * 520, dtype=np.uint8))
    plan = Plan.make(x, y, prepare.EVAL_BATCH, rng)
    assert len(plan.slots) == SERVERS == 2
    owner = {i: k for k in range(SERVERS) for row in plan.slots[k] for kind, i in row if kind == "real"}
    assert sorted(owner) == list(range(len(x))), "every real window is sent exactly once"
    for k in range(SERVERS):
        for row in plan.slots[k]:
            assert len(row) == prepare.EVAL_BATCH and any(kind == "check" for kind, _ in row)
            for kind, c in row:
                if kind == "check":
                    assert owner[plan.checks[c].origin] != k, "a check never goes to its real window's server"
    assert {c.kind for c in plan.checks} == {"splice", "repeat"}
    for c, chk in enumerate(plan.checks):
        assert (plan.check_windows[c][: chk.t + 1] == x[chk.origin][: chk.t + 1]).all()
        assert plan.check_windows[c].dtype == x.dtype and plan.check_windows[c].shape == x[0].shape


def test_what_the_model_prints_goes_to_the_eval_log_only(honest):
    code = with_forward(HONEST, "        print('FORWARD', idx.shape[0], flush=True)\n        return logits\n")
    r = run_variant(honest, "printer", code)
    assert r.status == "ok" and abs(r.value - honest.value) < 1e-9
    # "FORWARD" is one write; its " 16\n" may interleave with the other server's line (both append)
    assert r.printed.count("FORWARD") == 36, "both servers printed there"


def test_float16_logits_are_accepted(honest):
    r = run_variant(honest, "fp16", with_forward(HONEST, "        return logits.half()\n"))
    assert r.status == "ok" and r.result["logits_dtype"] == "float16"
    assert abs(r.value - honest.value) < 1e-3


# ------------------------------------------------------------------ the five families of issue 13

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_family1_peeking_once_in_eval_mode_is_invalid(honest, request, backend):
    require_backend(request, backend)
    """Causal while training (or while it thinks it is probed), peeks once in eval mode."""
    code = with_module_code(HONEST, PEEK)
    code = with_forward(code, "        return logits if self.training else _peek(idx, logits)\n")
    r = run_variant(honest, "f1-eval-mode", code, backend=backend)
    assert r.status == "invalid" and r.reason.startswith("the model looks ahead"), r.reason


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_family1b_an_overridden_eval_is_never_called(honest, request, backend):
    require_backend(request, backend)
    code = with_module_code(HONEST, PEEK)
    code = replace_once(code, "    def forward(self, idx):\n",
                        "    def eval(self):\n        self._peeking = True\n        return super().eval()\n\n"
                        "    def forward(self, idx):\n")
    code = with_forward(code, "        return _peek(idx, logits) if getattr(self, '_peeking', False) else logits\n")
    r = run_variant(honest, "f1b-eval-override", code, backend=backend)
    assert r.status == "ok" and abs(r.value - honest.value) < 1e-9, "eval mode is set without calling agent code"


@pytest.mark.parametrize("after", [7, 15])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_family2_counting_calls_then_peeking_is_invalid(honest, after, request, backend):
    require_backend(request, backend)
    """Causal for as many calls as a probe would make (7), or until near the end (15 of each server's 18)."""
    code = with_module_code(HONEST, PEEK + "_CALLS = [0]\n")
    code = with_forward(code, f"        _CALLS[0] += 1\n        return _peek(idx, logits) if _CALLS[0] > {after} else logits\n")
    r = run_variant(honest, f"f2-count-{after}", code, backend=backend)
    assert r.status == "invalid", (r.status, r.reason)


MEMORY_READER = '''
import gc as _gc
import sys as _sys
import numpy as _np
_FOUND = []


def _steal():
    """Look for the held-out bytes anywhere in this process: objects, frames, buffers."""
    if _FOUND:
        return _FOUND[0]
    big = None
    for o in _gc.get_objects():
        try:
            if isinstance(o, (bytes, bytearray)) and len(o) >= 2**17:
                big = bytes(o)
            elif isinstance(o, _np.ndarray) and o.dtype == _np.uint8 and o.size >= 2**17:
                big = o.tobytes()
            elif isinstance(o, torch.Tensor) and o.dtype in (torch.uint8, torch.int64) and o.numel() >= 2**17:
                big = bytes(o.flatten().to(torch.uint8).tolist())
        except Exception:
            pass
    for fr in list(_sys._current_frames().values()):
        while fr is not None:
            for v in fr.f_locals.values():
                if isinstance(v, (bytes, bytearray)) and len(v) >= 2**17:
                    big = bytes(v)
            fr = fr.f_back
    print("FOUND", 0 if big is None else len(big), flush=True)
    _FOUND.append(big)
    return big


def _predict(idx, logits, big):
    """Strictly causal: find the context so far in the stolen text, predict what followed it."""
    if big is None:
        return logits
    out = logits.clone()
    for b in range(idx.size(0)):
        row = bytes(idx[b].tolist())
        for s in range(8, idx.size(1)):
            j = big.find(row[s - 8:s + 1])
            if 0 <= j < len(big) - 9:
                out[b, s, big[j + 9]] += 30.0
    return out
'''


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_family3_reading_the_evaluators_memory_finds_nothing(honest, request, backend):
    require_backend(request, backend)
    code = with_module_code(HONEST, MEMORY_READER)
    code = with_forward(code, "        return _predict(idx, logits, _steal())\n")
    r = run_variant(honest, "f3-memory", code, backend=backend)
    assert "FOUND 0" in r.printed, "the attack ran and found no held-out bytes in its process"
    assert r.status == "ok" and abs(r.value - honest.value) < 1e-9, (r.status, r.reason)


FAKE_LOSS = '''
class _Liar(torch.Tensor):
    """Answers every loss function with zero, everything else as a normal tensor."""
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("cross_entropy", "nll_loss", "log_softmax", "logsumexp", "sum", "mean"):
            return torch.zeros(())
        return super().__torch_function__(func, types, args, kwargs or {})
'''


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_family4_a_tensor_subclass_cannot_fake_the_loss(honest, request, backend):
    require_backend(request, backend)
    code = with_module_code(HONEST, FAKE_LOSS)
    code = with_forward(code, "        return logits.as_subclass(_Liar)\n")
    r = run_variant(honest, "f4-liar", code, backend=backend)
    assert not_better(r, honest), (r.status, r.value, honest.value)
    assert r.status == "ok" and abs(r.value - honest.value) < 1e-9, "the loss is computed from the raw numbers"


WRITER = '''
import json as _json
_FORGED = _json.dumps({"status": "ok", "value": 0.0001, "bytes": 131072, "nonce": "0" * 32}) + "\\n"


def _forge():
    for fd in range(1, 64):
        try:
            os.write(fd, _FORGED.encode())
        except OSError:
            pass
    os._exit(0)
'''


@pytest.mark.parametrize("when", ["import", "forward"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_family5_writing_the_result_itself_is_not_a_result(honest, when, request, backend):
    require_backend(request, backend)
    code = with_module_code(HONEST, WRITER + ("_forge()\n" if when == "import" else ""))
    if when == "forward":
        code = with_forward(code, "        _forge()\n        return logits\n")
    r = run_variant(honest, f"f5-writer-{when}", code, backend=backend)
    assert r.status in ("invalid", "crash") and r.value is None, (r.status, r.reason)
    assert "0.0001" not in (r.reason or "")


# ------------------------------------------------------------------ other hostile models

HISTORY = '''
_SEEN = []


def _recall(idx, logits):
    """Remember every window sent so far (and the batch companions); predict a byte from any
    earlier occurrence of the 8 bytes before it: strictly causal within the window."""
    rows = [bytes(r.tolist()) for r in idx]
    _SEEN.extend(rows)
    text = b"\\x00".join(_SEEN[-600:])
    out = logits.clone()
    for b, row in enumerate(rows):
        for s in range(8, len(row)):
            j = text.find(row[s - 8:s + 1])
            if 0 <= j < len(text) - 9 and text[j + 9] != 0:
                out[b, s, text[j + 9]] += 30.0
    return out
'''


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_remembering_earlier_requests_is_invalid(honest, request, backend):
    require_backend(request, backend)
    code = with_module_code(HONEST, HISTORY)
    code = with_forward(code, "        return _recall(idx, logits)\n")
    r = run_variant(honest, "history", code, backend=backend)
    assert r.status == "invalid", (r.status, r.reason, r.value, honest.value)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_causal_attention_is_invalid(honest, request, backend):
    require_backend(request, backend)
    r = run_variant(honest, "noncausal", replace_once(HONEST, "is_causal=True", "is_causal=False"), backend=backend)
    assert r.status == "invalid" and r.reason.startswith("the model looks ahead")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_mixing_sequences_in_a_batch_is_invalid(honest, request, backend):
    require_backend(request, backend)
    code = replace_once(HONEST, FORWARD_END, "        x = x + x.mean(0, keepdim=True)\n" + FORWARD_END)
    r = run_variant(honest, "batchmix", code, backend=backend)
    assert r.status == "invalid" and "other sequences in the batch" in r.reason


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_randomness_left_on_in_eval_is_invalid(honest, request, backend):
    require_backend(request, backend)
    code = replace_once(HONEST, FORWARD_END, "        x = F.dropout(x, 0.2, training=True)\n" + FORWARD_END)
    r = run_variant(honest, "dropout", code, backend=backend)
    assert r.status == "invalid" and "deterministic" in r.reason


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_patching_torch_in_the_server_changes_nothing_it_can_use(honest, request, backend):
    require_backend(request, backend)
    code = with_module_code(HONEST, "F.cross_entropy = lambda *a, **k: torch.zeros(())\n"
                                    "torch.Tensor.sum = lambda self, *a, **k: self.new_zeros(())\n")
    r = run_variant(honest, "patches", code, backend=backend)
    assert r.status == "ok" and abs(r.value - honest.value) < 1e-9


def test_a_failure_message_cannot_carry_held_out_bytes(honest):
    """After READY the server has seen held-out windows: what it says is not passed on."""
    code = with_forward(HONEST, "        raise ValueError('LEAK ' + bytes(idx[0].tolist()).decode('latin-1'))\n")
    r = run_variant(honest, "leaky-error", code)
    assert r.status == "crash" and "LEAK" not in r.reason, r.reason
    assert "LEAK" in r.printed, "the traceback is in the EVAL log, for humans"


def test_a_hanging_model_times_out(honest):
    code = with_forward(HONEST, "        import time\n        time.sleep(3600)\n        return logits\n")
    r = run_variant(honest, "hang", code, eval_seconds=8)
    assert r.status == "timeout", (r.status, r.reason)


# ------------------------------------------------------------------ checkpoints and agent failures

def test_checkpoint_that_runs_code_on_load_is_refused(honest, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(honest.ckpt, weights_only=True)
    state["tok.weight"] = Payload()
    ckpt = tmp_path / "model.pt"
    torch.save(state, ckpt)
    r = run_variant(honest, "pickle", HONEST, ckpt=ckpt)
    assert r.status == "invalid" and "weights_only" in r.reason
    assert not marker.exists(), "the payload ran"


def test_nan_weights_are_invalid(honest, tmp_path):
    state = torch.load(honest.ckpt, weights_only=True)
    state["ln_f.weight"][0] = float("nan")
    ckpt = tmp_path / "model.pt"
    torch.save(state, ckpt)
    r = run_variant(honest, "nan", HONEST, ckpt=ckpt)
    assert r.status == "invalid" and "NaN" in r.reason


@pytest.mark.parametrize("case", ["no build_model", "wrong shape", "no checkpoint", "wrong logits"])
def test_broken_agent_code_is_a_crash_with_a_reason(honest, tmp_path, case):
    ckpt = honest.ckpt
    if case == "no build_model":
        code, want = replace_once(HONEST, "def build_model():", "def make_model():"), "no build_model()"
    elif case == "wrong shape":
        code, want = replace_once(HONEST, "N_EMBD = 64", "N_EMBD = 32"), "does not fit build_model()"
    elif case == "wrong logits":
        code, want = with_forward(HONEST, "        return logits[:, :-1]\n"), "logits of another shape than (16, 256, 256)"
    else:
        code, want, ckpt = HONEST, "saved no checkpoint", tmp_path / "absent.pt"
    r = run_variant(honest, case.replace(" ", "-"), code, ckpt=ckpt)
    assert r.status == "crash" and want in r.reason, r.reason


# ------------------------------------------------------------------ sanity

def test_value_past_the_physical_floor_is_invalid(honest):
    r = run_variant(honest, "floor", HONEST, floor=10)
    assert r.status == "invalid" and "physical floor 10" in r.reason


def test_too_little_held_out_data_is_invalid(honest):
    r = evaluate(honest.proj, honest.ckpt, honest.val[: prepare.EVAL_BYTES // 2], honest.base)
    assert r.status == "invalid" and "too short" in r.reason


# ------------------------------------------------------------------ issue 24: checks judge what is scored

def _toy_plan(seed: int):
    from autoresearch.run.scorer import Plan
    rng = np.random.default_rng(seed)
    x, y = prepare.eval_windows(np.frombuffer(rng.integers(0, 64, 2**17 + 1, dtype=np.uint8).tobytes(), dtype=np.uint8))
    return Plan.make(x, y, prepare.EVAL_BATCH, rng), x


def _toy_logits(windows: np.ndarray, peek: bool) -> np.ndarray:
    """A causal toy model (logits from the byte at each position), or one that also peeks at the next."""
    n, T = windows.shape
    z = np.zeros((n, T, 256), dtype=np.float32)
    z[..., 64:] = -20.0                                  # bytes the toy corpus never has: all but impossible
    z[np.arange(n)[:, None], np.arange(T)[None, :], (windows.astype(np.int64) * 7) % 64] = 3.0
    if peek:
        nxt = np.roll(windows, -1, axis=1).astype(np.int64)
        z[np.arange(n)[:, None], np.arange(T - 1)[None, :], nxt[:, :-1]] += 30.0
    return z


def _kept(plan, x, peek: bool, transform) -> dict:
    real = transform(_toy_logits(x, peek))
    checks = transform(_toy_logits(plan.check_windows, peek))
    need = {c.origin for c in plan.checks}
    kept = {("check", c): checks[c] for c in range(len(plan.checks))}
    kept.update({("real", i): real[i] for i in need})
    return kept


SCORE_PRESERVING = {
    "identity": lambda z: z,
    "shift +5000": lambda z: z + np.float32(5000),
    "shift -3000": lambda z: z - np.float32(3000),
    "per-position shift": lambda z: z + np.arange(z.shape[1], dtype=np.float32)[None, :, None] * 10,
    "never-occurring bytes at -9000": lambda z: np.where(np.arange(256) >= 64, np.float32(-9000), z),
}


@pytest.mark.parametrize("name", sorted(SCORE_PRESERVING))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_score_preserving_transformation_changes_what_a_check_accepts(name, seed):
    """The checks compare float64 log-softmax with an absolute tolerance: a transformation of the
    logits that leaves the score unchanged leaves every check's verdict (and drift) unchanged."""
    from autoresearch.run.scorer import TOLERANCE, Scorer, EvalEnded
    plan, x = _toy_plan(seed)
    f = SCORE_PRESERVING[name]
    for peek in (False, True):
        base = {k: prepare.window_nats(v[None], plan.targets[k[1]][None] if k[0] == "real" else
                                       plan.targets[plan.checks[k[1]].origin][None]).sum()
                for k, v in _kept(plan, x, peek, lambda z: z).items()}
        moved = {k: prepare.window_nats(v[None], plan.targets[k[1]][None] if k[0] == "real" else
                                        plan.targets[plan.checks[k[1]].origin][None]).sum()
                 for k, v in _kept(plan, x, peek, f).items()}
        assert all(abs(base[k] - moved[k]) < 1e-2 for k in base), "the transformation preserves the score"
        verdicts = []
        for transform in (lambda z: z, f):
            try:
                verdicts.append(("ok", round(Scorer._verify(plan, _kept(plan, x, peek, transform), TOLERANCE["<f4"]), 6)))
            except EvalEnded as v:
                verdicts.append((v.status, v.reason.split(" by ")[0].split(" at position")[0]))
        assert verdicts[0] == verdicts[1], (name, peek, verdicts)
        assert verdicts[0][0] == ("invalid" if peek else "ok"), verdicts


def test_logits_out_of_range_or_not_finite_are_refused_before_any_check():
    from autoresearch.run.scorer import LOGIT_LIMIT
    assert LOGIT_LIMIT <= 1e4


LOGIT_SHIFT = '''
def _shift(logits, c):
    return logits + c
'''

SENTINEL = '''
def _sentinel(logits, value):
    """Bytes that never occur in the corpus (here: >= 128) pushed to `value`: the score is unchanged."""
    out = logits.clone()
    out[..., 128:] = value
    return out
'''


@pytest.mark.parametrize("backend", ["none"] + [pytest.param(b.values[0], marks=b.marks, id=b.id)
                                                 for b in __import__("experiment_support").BACKENDS])
@pytest.mark.parametrize("attack", ["shift-1e6", "shift-5e3", "sentinel-1e9", "sentinel-9e3"])
def test_family6_logit_shift_and_sentinels_cannot_widen_a_check(honest, request, attack, backend):
    """A peeking model that adds a huge constant to every logit, or pushes never-occurring bytes to
    a huge negative value, used to widen the (relative) tolerance until every peek passed."""
    from experiment_support import require_backend
    require_backend(request, backend)
    code = with_module_code(HONEST, PEEK + LOGIT_SHIFT + SENTINEL)
    kind, value = attack.split("-")
    call = f"_shift(_peek(idx, logits), {value})" if kind == "shift" else f"_sentinel(_peek(idx, logits), -{value})"
    r = run_variant(honest, f"f6-{attack}", with_forward(code, f"        return {call}\n"), backend=backend)
    assert r.status == "invalid", (r.status, r.reason, r.value, honest.value)
    assert ("beyond +-" in r.reason) if value in ("1e6", "1e9") else r.reason.startswith("the model looks ahead")


@pytest.mark.parametrize("backend", ["none"] + [pytest.param(b.values[0], marks=b.marks, id=b.id)
                                                 for b in __import__("experiment_support").BACKENDS])
@pytest.mark.parametrize("kind", ["shift", "sentinel"])
def test_an_honest_model_that_shifts_its_logits_or_sets_sentinels_passes_every_check(honest, request, kind, backend):
    from experiment_support import require_backend
    require_backend(request, backend)
    code = with_forward(with_module_code(HONEST, LOGIT_SHIFT + SENTINEL),
                        "        return " + ("_shift(logits, 5e3)" if kind == "shift" else "_sentinel(logits, -9e3)") + "\n")
    r = run_variant(honest, f"f6-honest-{kind}", code, backend=backend)
    assert r.status == "ok", (r.status, r.reason)
    assert r.result["check_max_diff_nats"] < 1e-3
    if kind == "shift":                                  # float32 at 5000 rounds at 5e-4: the score barely moves
        assert abs(r.value - honest.value) < 1e-2, (r.value, honest.value)


# ------------------------------------------------------------------ issue 24: whole runs, both backends

GRACE_READER = '''
import re as _re
_GRACE = float(_re.search(r"grace_seconds:\\s*([0-9.]+)", open("program.md").read()).group(1))
'''
STOP_LINE = "    stop_at = STARTED + TRAIN_SECONDS * (1 - SAVE_MARGIN) - t0     # seconds of training left after set-up\n"


@pytest.mark.slow
@pytest.mark.parametrize("backend", __import__("experiment_support").BACKENDS)
@pytest.mark.parametrize("overrun", ["through-the-grace", "through-the-save-margin"])
def test_family7_training_past_the_budget_gains_no_more_than_the_save_margin(tmp_path, request, backend, overrun):
    """A train.py that reads the grace from program.md and trains until just before the old kill
    (budget + grace) is killed at budget + the save margin; one that knows the margin gets at most it."""
    from experiment_support import make_project, metrics, require_backend, run_sh
    from autoresearch.program.sections import save_margin
    require_backend(request, backend)
    extra = "budget + _GRACE - 1" if overrun == "through-the-grace" else f"budget + {save_margin(3):g} - 0.8"
    code = with_module_code(HONEST, GRACE_READER)
    code = replace_once(code, STOP_LINE, f"    budget = TRAIN_SECONDS\n    stop_at = STARTED + {extra} - t0\n")
    proj = make_project(tmp_path / "p", train_py=code, grace_seconds=60)
    run_sh(proj, "-m", overrun, "--backend", backend, "--budget", "3")
    m = metrics(proj)
    assert m["agent_seconds"] <= 3 + save_margin(3) + 0.5, m["agent_seconds"]
    if overrun == "through-the-grace":
        assert m["status"] == "timeout" and "save margin" in m["reason"], (m["status"], m["reason"])
    else:
        assert m["status"] in ("ok", "timeout"), (m["status"], m["reason"])


DEEP_TREE = '''
def _hostile_tree(where):
    """A 3,000-deep folder chain, a folder chmod 000 with files in it, a FIFO, an odd name."""
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    locked = os.path.join(where, "locked")
    os.makedirs(os.path.join(locked, "inner"))
    open(os.path.join(locked, "inner", "f"), "w").write("x")
    os.chmod(os.path.join(locked, "inner"), 0)
    os.chmod(locked, 0)
    os.mkfifo(os.path.join(where, "fifo"))
    open(os.path.join(os.fsencode(where), b"bad\\xffname"), "w").write("x")
'''


@pytest.mark.slow
@pytest.mark.parametrize("backend", __import__("experiment_support").BACKENDS)
def test_family8_a_deep_hostile_tree_in_the_work_copy_and_out_never_stops_the_next_run(tmp_path, request, backend):
    from experiment_support import make_project, metrics, require_backend, run_sh, with_main_prelude
    require_backend(request, backend)
    code = with_main_prelude(HONEST, "_hostile_tree(os.getcwd())\n_hostile_tree(OUT_DIR)", helpers=DEEP_TREE)
    proj = make_project(tmp_path / "p", train_py=code)
    for n in ("0001", "0002"):
        p = run_sh(proj, "-m", f"deep tree {n}", "--backend", backend, "--budget", "8")
        m = metrics(proj, n)
        assert p.returncode in (0, 1) and m["status"] != "interrupted", (p.stdout + p.stderr)[-2000:]
        assert not (proj / "runs" / n / ".sandbox").exists(), "scratch and work copies are gone"
        assert "cleanup" not in m["extra"], m["extra"]["cleanup"]
        assert m["status"] == "ok", (m["status"], m["reason"])
        assert "d/" in m["extra"]["out_removed"] and "fifo" in m["extra"]["out_removed"]
