"""What an experiment's code can reach, per backend: one adversarial train.py per backend
tries everything at once (each attempt prints `PROBE <name> blocked|OPEN`), then trains
honestly, then forges a metric. The EVAL stage runs the same file, whose forward pass
tries to read the validation data. A control run under backend `none` shows the probes
do detect access when nothing isolates them."""
from __future__ import annotations

import hashlib
import re
import socket
import uuid
from pathlib import Path

import pytest

from autoresearch.record.layout import eval_log

from experiment_support import (BACKENDS, HONEST, log_of, make_project, metrics, require_backend, run_sh,
                                split_log, with_main_prelude)

ATTEMPT = '''
import socket as _socket


def _attempt(tag, name, fn):
    try:
        r = fn()
        print(f"{tag} {name} OPEN {r!r}"[:160], flush=True)
    except Exception as e:
        print(f"{tag} {name} blocked {type(e).__name__}", flush=True)


_FWD_DONE = []


def _forward_probe():
    if _FWD_DONE:
        return
    _FWD_DONE.append(1)
    import prepare as _p
    _attempt("FWD", "val-file", lambda: len(open(VAL_PATH, "rb").read()))
    _attempt("FWD", "val-split", lambda: len(_p.load_split("val")))
    print("FWD stdin", len(os.read(0, 1 << 20)), flush=True)
'''


def adversarial_train_py(paths: dict[str, str], port: int) -> str:
    consts = "\n".join(f"{k} = {v!r}" for k, v in paths.items()) + f"\nPORT = {port}\n"
    prelude = '''
import prepare as _p
_attempt("PROBE", "val-file", lambda: len(open(VAL_PATH, "rb").read()))
_attempt("PROBE", "test-file", lambda: len(open(TEST_PATH, "rb").read()))
_attempt("PROBE", "val-split", lambda: len(_p.load_split("val")))
_attempt("PROBE", "test-split", lambda: len(_p.load_split("test")))
_attempt("PROBE", "earlier-run", lambda: open(EARLIER, "rb").read())
_attempt("PROBE", "write-prepare", lambda: open(PREPARE, "a").write("# changed"))
_attempt("PROBE", "write-project", lambda: open(PROJECT_NEW, "w").write("x"))
_attempt("PROBE", "write-home", lambda: open(HOME_PROBE, "w").write("x"))
_attempt("PROBE", "write-outside", lambda: open(OUTSIDE, "w").write("x"))
_attempt("PROBE", "write-run-metrics", lambda: open(RUN_METRICS, "w").write("{}"))
_attempt("PROBE", "dns", lambda: _socket.getaddrinfo("pypi.org", 443))
_attempt("PROBE", "ip", lambda: _socket.create_connection(("1.1.1.1", 53), timeout=3).close())
_attempt("PROBE", "loopback", lambda: _socket.create_connection(("127.0.0.1", PORT), timeout=3).close())
'''
    epilogue = '''
with open(os.path.join(OUT_DIR, "metrics.json"), "w") as f:
    f.write('{"status": "ok", "metric_value": 0.0001, "val_bpb": 0.0001}')
print("val_bpb: 0.0001", flush=True)
print('{"status": "ok", "value": 0.0001, "bytes": 131072}', flush=True)
'''
    code = HONEST.replace("    def forward(self, idx):\n        T = idx.size(1)\n",
                          "    def forward(self, idx):\n        _forward_probe()\n        T = idx.size(1)\n", 1)
    assert "_forward_probe()" in code
    return with_main_prelude(code, prelude, epilogue, helpers=consts + ATTEMPT)


def _probes(text: str, tag: str = "PROBE") -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(rf"^{tag} (\S+) (blocked|OPEN)", text, re.M)}


@pytest.fixture(scope="module", params=BACKENDS)
def adversarial(request, tmp_path_factory, data_dir):
    """One run per backend; the tests below read its record."""
    backend = request.param
    require_backend(request, backend)
    base = tmp_path_factory.mktemp(f"adv-{backend}")
    proj = base / "p"
    outside = base / "outside"
    outside.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    paths = {
        "VAL_PATH": str(data_dir / "val" / "val.bin"), "TEST_PATH": str(data_dir / "test" / "test.bin"),
        "EARLIER": str(proj / "runs" / "0001" / "out" / "model.pt"), "PREPARE": str(proj / "prepare.py"),
        "PROJECT_NEW": str(proj / "new.txt"), "HOME_PROBE": str(Path.home() / f".ar-probe-{uuid.uuid4().hex}"),
        "OUTSIDE": str(outside / "x"), "RUN_METRICS": str(proj / "runs" / "0002" / "metrics.json"),
    }
    make_project(proj, train_py=adversarial_train_py(paths, listener.getsockname()[1]))
    (proj / "runs" / "0001" / "out").mkdir(parents=True)
    (proj / "runs" / "0001" / "out" / "model.pt").write_bytes(b"an earlier run's checkpoint")
    prepare_sha = hashlib.sha256((proj / "prepare.py").read_bytes()).hexdigest()
    try:
        p = run_sh(proj, "-m", "adversarial", "--backend", backend, "--budget", "3")
        try:
            listener.accept()
            accepted = True
        except BlockingIOError:
            accepted = False
    finally:
        listener.close()
    yield {"backend": backend, "proc": p, "proj": proj, "paths": paths, "accepted": accepted,
           "prepare_sha": prepare_sha, "m": metrics(proj, "0002"), "log": log_of(proj, "0002")}
    Path(paths["HOME_PROBE"]).unlink(missing_ok=True)


@pytest.mark.slow
def test_the_metric_is_the_evaluators_not_the_forgery(adversarial):
    a = adversarial
    assert a["proc"].returncode == 0, a["proc"].stdout + a["proc"].stderr
    m = a["m"]
    assert m["status"] == "ok", (m, a["log"][-2000:])
    assert m["sandbox"] == a["backend"]
    assert 1.5 < m["metric_value"] < 8.5   # the evaluator's bpb, far from the forged 0.0001 (load may slow training)
    forged = a["proj"] / "runs" / "0002" / "out" / "metrics.json"
    assert forged.is_file(), "the forgery was written (to the out folder, where it means nothing)"
    assert "val_bpb: 0.0001" in a["log"], "the fake line was printed, into the log"
    assert f"val_bpb: {m['metric_value']:.6f}" in a["proc"].stdout
    assert "0.0001" not in a["proc"].stdout


@pytest.mark.slow
def test_validation_and_test_data_are_not_visible_in_train(adversarial):
    train, _ = split_log(adversarial["log"])
    probes = _probes(train)
    for name in ("val-file", "test-file", "val-split", "test-split"):
        assert probes.get(name) == "blocked", (name, train[:3000])


@pytest.mark.slow
def test_earlier_runs_are_hidden_from_training(adversarial):
    assert _probes(split_log(adversarial["log"])[0]).get("earlier-run") == "blocked"


@pytest.mark.slow
def test_writes_outside_the_out_folder_fail(adversarial):
    a = adversarial
    probes = _probes(split_log(a["log"])[0])
    for name in ("write-prepare", "write-project", "write-home", "write-outside", "write-run-metrics"):
        assert probes.get(name) == "blocked", (name, probes)
    assert hashlib.sha256((a["proj"] / "prepare.py").read_bytes()).hexdigest() == a["prepare_sha"]
    assert not (a["proj"] / "new.txt").exists()
    assert not Path(a["paths"]["HOME_PROBE"]).exists()
    assert not Path(a["paths"]["OUTSIDE"]).exists()


@pytest.mark.slow
def test_no_network_not_even_the_hosts_loopback(adversarial):
    probes = _probes(split_log(adversarial["log"])[0])
    for name in ("dns", "ip", "loopback"):
        assert probes.get(name) == "blocked", (name, probes)
    assert not adversarial["accepted"], "the host's 127.0.0.1 listener got a connection"


@pytest.mark.slow
def test_eval_forward_cannot_read_the_validation_data(adversarial):
    _, evals = split_log(adversarial["log"])
    assert "evaluate: ok" in evals, "the EVAL stage ran"
    assert "FWD" not in evals, "what the model prints in EVAL stays out of train.log"
    printed = eval_log(adversarial["proj"], "0002").read_text(errors="replace")
    probes = _probes(printed, "FWD")
    assert probes.get("val-file") == "blocked" and probes.get("val-split") == "blocked", printed[:2000]
    assert re.search(r"^FWD stdin 0$", printed, re.M), "the model server's stdin is not agent code's to read"


@pytest.mark.slow
def test_control_without_a_sandbox_the_probes_see_everything(tmp_path, data_dir):
    """Backend none isolates nothing: the same probes must then report OPEN (so a pass above means something)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    prelude = '''
import prepare as _p
_attempt("PROBE", "val-file", lambda: len(open(VAL_PATH, "rb").read()))
_attempt("PROBE", "loopback", lambda: _socket.create_connection(("127.0.0.1", PORT), timeout=3).close())
'''
    consts = f"VAL_PATH = {str(data_dir / 'val' / 'val.bin')!r}\nPORT = {listener.getsockname()[1]}\n"
    code = HONEST.replace("    def forward(self, idx):\n        T = idx.size(1)\n",
                          "    def forward(self, idx):\n        _forward_probe()\n        T = idx.size(1)\n", 1)
    proj = make_project(tmp_path / "p", train_py=with_main_prelude(code, prelude, helpers=consts + ATTEMPT))
    try:
        p = run_sh(proj, "-m", "control", "--backend", "none", "--budget", "2")
    finally:
        listener.close()
    assert p.returncode == 0, p.stdout + p.stderr
    m = metrics(proj)
    assert m["sandbox"] == "none" and "SANDBOX DISABLED" in m["sandbox_warning"]
    assert "SANDBOX DISABLED" in p.stdout
    train, _ = split_log(log_of(proj))
    assert _probes(train) == {"val-file": "OPEN", "loopback": "OPEN"}
