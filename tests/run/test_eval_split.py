"""The evaluator split (issue 16, eval.model), for real under bwrap: the human's eval script runs
WITHOUT the agent's code and asks the agent's model, in other sandboxes, for outputs.

A CLIP-like toy: held-out images (one-hot concept features) and captions (token ids, in a shuffled
order) live in an eval-only mount, with labels (which caption is each image's). TRAIN "learns" a
token table from a train-only file that confuses two concepts; model.py (agent code) embeds images
and captions; eval.py (frozen) computes image->text retrieval accuracy from the embeddings and the
labels only it sees. The honest accuracy is (concepts - 2) / concepts."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autoresearch.record.layout import eval_log

from experiment_support import git_env, log_of, metrics, run_sh

from autoresearch.program import parse_program

N = 10
TRAIN = '''
import json, os
import numpy as np
swap = json.load(open(os.path.join(os.environ["TRAIN_DATA"], "train.json")))["confused"]
table = np.eye(10, dtype=np.float32)
table[swap] = table[swap[::-1]]                     # an imperfect model: two concepts confused
np.savez(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.npz"), text=table)
'''
MODEL = '''
import numpy as np
def load(out):
    table = np.load(out + "/model.npz")["text"]
    def predict(batch):
        if "image" in batch:
            return {"emb": batch["image"].astype(np.float32)}
        return {"emb": table[batch["text"][:, 0] - 1]}
    return predict
'''
EVAL = '''
import json, os, sys
import numpy as np
from autoresearch.inside.evalclient import model
held = os.environ["HELD"]
try:
    import model as agent_code
    print("PROBE import agent code: done")
except ImportError as e:
    print("PROBE import agent code:", type(e).__name__)
print("PROBE project holds:", sorted(f for f in os.listdir(".") if f != "runs"))
img, txt, lab = (np.load(os.path.join(held, f)) for f in ("images.npy", "texts.npy", "labels.npy"))
emb = lambda key, x: np.concatenate([model({key: x[i:i + 4]}, expect={"emb": ((None, 10), "float32")})["emb"]
                                     for i in range(0, len(x), 4)])
acc = float(((emb("image", img) @ emb("text", txt).T).argmax(1) == lab).mean())
print("eval.py: accuracy", acc)
json.dump({"value": acc}, open(os.environ["AUTORESEARCH_METRIC_FILE"], "w"))
'''
PROBES = '''
import os, sys
def _attempt(what, fn):
    try:
        fn()
        print(f"PROBE {what}: done", file=sys.stderr, flush=True)
    except OSError as e:
        print(f"PROBE {what}: {type(e).__name__}", file=sys.stderr, flush=True)
_attempt("read labels", lambda: open(os.path.join(os.environ["HELD"], "labels.npy"), "rb").read())
_attempt("write metric", lambda: open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs", "0001",
                                                    ".metric", "metric.json"), "w").write('{"value": 1.0}'))
print("val_acc: 1.0", flush=True)                   # a forged printed metric
os.write(1, b'{"value": 1.0}\\n')
'''


def program(tmp: Path, split: str = "model: model.py:load, checks: 1.0") -> str:
    return (f"---\nmetric: {{name: val_acc, direction: maximize, floor: 0.0, ceiling: 1.0}}\n"
            f"budget: {{train_seconds: 5, grace_seconds: 20, eval_seconds: 60}}\n"
            f"editable: [train.py, model.py, scratchpad.md]\nsandbox: {{memory_gb: 2}}\n"
            f"run: {{mode: eval_command, command: [python, train.py], "
            f"env: {{HELD: '{tmp / 'held'}', TRAIN_DATA: '{tmp / 'train-data'}'}}}}\n"
            f"eval: {{command: [python, eval.py], files: [eval.py], {split}}}\n"
            f"mounts:\n  - {{path: {tmp / 'train-data'}, stages: [train]}}\n"
            f"  - {{path: {tmp / 'held'}, stages: [eval, final]}}\n---\nprose\n")


def clip_repo(tmp: Path, model: str = MODEL, **kw: str) -> Path:
    held, train = tmp / "held", tmp / "train-data"
    held.mkdir(parents=True)
    train.mkdir()
    perm = np.random.default_rng(7).permutation(N)          # caption j describes concept perm[j]
    np.save(held / "images.npy", np.eye(N, dtype=np.float32))
    np.save(held / "texts.npy", np.stack([perm + 1] + [np.zeros(N, dtype=np.int64)] * 3, axis=1))
    np.save(held / "labels.npy", np.argsort(perm))
    (train / "train.json").write_text(json.dumps({"confused": [8, 9]}))
    proj = tmp / "repo"
    proj.mkdir()
    for name, text in (("train.py", TRAIN), ("model.py", model), ("eval.py", EVAL),
                       ("program.md", program(tmp, **kw)), ("scratchpad.md", "notes\n"), (".gitignore", "runs/\n")):
        (proj / name).write_text(text)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "--no-verify", "-m", "a CLIP-like repo with its eval script"]):
        subprocess.run(cmd, cwd=proj, check=True, env=git_env())
    return proj


def _run(proj: Path) -> dict:
    p = run_sh(proj, "-m", "baseline", "--backend", "bwrap", timeout=240)
    assert (proj / "runs" / "0001" / "metrics.json").is_file(), p.stdout + p.stderr
    return metrics(proj, "0001")


@pytest.mark.slow
def test_the_trusted_script_measures_retrieval_and_the_model_sees_no_labels(tmp_path, bwrap_available):
    proj = clip_repo(tmp_path, model=PROBES + MODEL)
    m = _run(proj)
    assert (m["status"], m["metric_value"]) == ("ok", (N - 2) / N), m["reason"]
    assert m["extra"]["eval_requests"] == 6 and m["extra"]["eval_check_requests"] == 6     # checks: 1.0
    assert m["extra"]["eval_servers"] == 2 and m["extra"]["eval_check_max_diff"] == 0.0
    printed = eval_log(proj, "0001").read_text()
    assert "PROBE read labels: FileNotFoundError" in printed and "PROBE read labels: done" not in printed
    assert "PROBE write metric: done" not in printed and "PROBE write metric: " in printed
    assert "PROBE import agent code: ModuleNotFoundError" in printed       # the script never runs agent code
    assert "PROBE project holds: ['eval.py']" in printed
    assert f"evaluate: ok val_acc {(N - 2) / N}" in log_of(proj) and "val_acc: 1.0" not in log_of(proj)


HOSTILE = {
    "noisy": MODEL.replace('"emb": batch["image"].astype(np.float32)',
                           '"emb": batch["image"].astype(np.float32) + np.random.default_rng().random() * 1e-2'),
    "remembers": MODEL.replace("    def predict(batch):", "    seen = set()\n    def predict(batch):\n"
                               "        again = any(r.tobytes() in seen for v in batch.values() for r in v)\n"
                               "        seen.update(r.tobytes() for v in batch.values() for r in v)\n"
                               "        if again:\n"
                               "            return {'emb': np.ones((len(next(iter(batch.values()))), 10), "
                               "np.float32)}"),
    "batch_mates": MODEL.replace('"emb": batch["image"].astype(np.float32)',
                                 '"emb": batch["image"].astype(np.float32) - batch["image"].mean(0)'),
    "wrong_batch": MODEL.replace('"emb": batch["image"].astype(np.float32)', '"emb": np.zeros((1, 10), np.float32)'),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_model_is_invalid(tmp_path, bwrap_available, kind):
    m = _run(clip_repo(tmp_path, model=HOSTILE[kind]))
    assert (m["status"], m["metric_value"]) == ("invalid", None), m
    want = "as its first dimension" if kind == "wrong_batch" else "differently when asked again"
    assert want in m["reason"], m["reason"]


@pytest.mark.slow
def test_a_model_that_fails_is_a_crash_and_its_words_stay_in_the_log(tmp_path, bwrap_available):
    bad = MODEL.replace('return {"emb": table', 'raise ValueError(f"secret {batch}")\n        return {"emb": table')
    m = _run(clip_repo(tmp_path, model=bad, split="model: model.py:load, checks: 0"))
    assert (m["status"], m["metric_value"]) == ("crash", None), m
    assert "the model failed during evaluation: ValueError" in m["reason"] and "secret" not in m["reason"]
    assert m["extra"]["eval_servers"] == 1


def test_eval_model_is_checked_in_program_md():
    text = "---\nrun: {mode: eval_command, command: [python, train.py]}\neval: {command: [python, e.py], " \
           "files: [e.py], model: %s}\n---\n"
    assert parse_program(text % "model.py:load").eval.model == "model.py:load"
    for bad in ("model.py", "../x.py:load", "/abs/m.py:load", "model.py:1x"):
        with pytest.raises(Exception, match="eval"):
            parse_program(text % bad)


def test_doctor_checks_the_eval_model_entry(tmp_path):
    """A missing file, a file that does not parse, or no such function: doctor fails and names it."""
    from autoresearch.cli.envcheck import _check_model_entry
    got = _check_model_entry(tmp_path, "model.py:load")
    assert got.level == "fail" and "no file model.py" in got.found
    (tmp_path / "model.py").write_text("def load(:\n")
    assert "does not parse" in _check_model_entry(tmp_path, "model.py:load").found
    (tmp_path / "model.py").write_text("def lode(out_dir):\n    return None\n")
    got = _check_model_entry(tmp_path, "model.py:load")
    assert got.level == "fail" and "defines no load" in got.found and "def load(out_dir)" in got.fix
    for ok in ("def load(out_dir):\n    pass\n", "from somewhere import load\n", "load = make_loader()\n"):
        (tmp_path / "model.py").write_text(ok)
        assert _check_model_entry(tmp_path, "model.py:load").level == "ok", ok


@pytest.mark.slow
def test_the_model_server_imports_the_repo_s_flat_modules_and_its_source_roots(tmp_path, bwrap_available):
    """Issue 29: eval.model in src/ doing `from utils import ...` (a module beside it, as `python
    src/x.py` would find it) and `from common import ...` (lib/, named in run.source_roots): the
    model server's import path has both, with no PYTHONPATH in run.env."""
    proj = clip_repo(tmp_path, split="model: src/model.py:load, checks: 0")
    (proj / "src").mkdir()
    (proj / "lib").mkdir()
    (proj / "src" / "utils.py").write_text("import numpy as np\nDTYPE = np.float32\n")
    (proj / "lib" / "common.py").write_text("def first(x):\n    return x[:, 0] - 1\n")
    (proj / "src" / "model.py").write_text("from utils import DTYPE\nfrom common import first\n" + MODEL.replace(
        "np.float32", "DTYPE").replace('batch["text"][:, 0] - 1', 'first(batch["text"])'))
    (proj / "model.py").unlink()
    text = (proj / "program.md").read_text()
    (proj / "program.md").write_text(text.replace("model.py, scratchpad", "src/model.py, scratchpad")
                                     .replace("run: {mode: eval_command,", "run: {source_roots: [lib], mode: eval_command,"))
    for cmd in (["git", "add", "-A"], ["git", "commit", "-q", "--no-verify", "-m", "model in src/"]):
        subprocess.run(cmd, cwd=proj, check=True, env=git_env())
    m = _run(proj)
    assert (m["status"], m["metric_value"]) == ("ok", (N - 2) / N), m["reason"]


SLOW_TRAIN = TRAIN.replace("import json, os\n", "import json, os, sys, time\ntime.sleep(2)\n") + '''
open(os.path.join(os.environ["AUTORESEARCH_OUT"], "ended"), "w").write(repr(time.time()))
sys.exit(int(os.environ.get("FAIL", "0")))
'''
WHEN = "import sys, time\nprint(f'PROBE model imported at {time.time()!r}', file=sys.stderr, flush=True)\n"


@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True])
def test_the_split_s_servers_warm_up_with_train_and_run_agent_code_only_after_it(tmp_path, bwrap_available, fail):
    """The model servers start (and import torch) while TRAIN trains: agent code in them runs only
    once TRAIN has ended ok, and never when it failed (they hang up after their warm-up)."""
    from autoresearch.inside.protocol import AGENT_STARTS
    from autoresearch.run.startup import WARMED
    proj = clip_repo(tmp_path, model=WHEN + MODEL)
    (proj / "train.py").write_text(SLOW_TRAIN)
    if fail:
        (proj / "program.md").write_text((proj / "program.md").read_text().replace("env: {", "env: {FAIL: '1', "))
    subprocess.run(["git", "commit", "-qam", "slow"], cwd=proj, check=True, env=git_env())
    p = run_sh(proj, "-m", "warm split", "--backend", "bwrap", timeout=240)
    m = metrics(proj, "0001")
    printed = eval_log(proj, "0001").read_text()
    assert printed.count(WARMED) == 2, printed                      # both servers warmed up, with TRAIN
    if fail:
        assert m["status"] == "crash" and "PROBE model imported" not in printed, (m, printed)
        assert AGENT_STARTS not in printed
        return
    assert (m["status"], m["metric_value"]) == ("ok", (N - 2) / N), (m["reason"], p.stdout, printed)
    ended = float((proj / "runs" / "0001" / "out" / "ended").read_text())
    imported = [float(line.split(" at ")[1]) for line in printed.splitlines() if "PROBE model imported at" in line]
    assert len(imported) == 2 and min(imported) > ended, (imported, ended)
    assert printed.index(WARMED) < printed.index(AGENT_STARTS)
    assert m["eval_seconds"] < 2 + 5, m                              # from GO: not the servers' warm-up


@pytest.mark.slow
def test_a_warm_train_runs_beside_the_split_s_fresh_servers(tmp_path, bwrap_available):
    """AUTORESEARCH_WARM=1 holds TRAIN alone for the evaluator split (its servers are never held):
    the next run takes the warm TRAIN and starts its servers with it, scored as a cold run is."""
    import time
    from autoresearch.run.warm import discard_all, warm_root
    proj = clip_repo(tmp_path)
    try:
        assert run_sh(proj, "-m", "cold", "--backend", "bwrap", timeout=240, AUTORESEARCH_WARM="1").returncode == 0
        end = time.monotonic() + 60
        root = warm_root(proj.resolve())
        while time.monotonic() < end and not any(
                "done before this run was asked for" in (d / "train.log").read_text(errors="replace")
                for d in (root.iterdir() if root.is_dir() else []) if (d / "train.log").is_file()):
            time.sleep(0.2)                                        # the holder's TRAIN has warmed up
        p = run_sh(proj, "-m", "warm", "--backend", "bwrap", timeout=240, AUTORESEARCH_WARM="1")
        m = metrics(proj, "0002")
        assert (m["status"], m["metric_value"]) == ("ok", (N - 2) / N), (m["reason"], p.stdout, p.stderr)
        assert "warm_waited_seconds" in m["extra"] and "not used" not in m["extra"].get("warm", ""), m["extra"]
        assert m["extra"]["eval_servers"] == 2
    finally:
        discard_all(proj.resolve())


@pytest.mark.slow
def test_final_scores_a_split_run_with_servers_started_then(tmp_path, bwrap_available):
    """`final` starts the split's servers itself (no TRAIN to start with) and tells them GO at once."""
    from autoresearch.cli.final import score_run
    from autoresearch.program import load_program
    proj = clip_repo(tmp_path, model=WHEN + MODEL)
    assert _run(proj)["status"] == "ok"
    s = score_run(proj, load_program(proj), "0001", backend="bwrap")
    assert (s.status, s.value) == ("ok", (N - 2) / N), s
