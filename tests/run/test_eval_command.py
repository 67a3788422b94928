"""eval.command (issue 16): the human's frozen evaluation script, for real under the sandbox.

A legacy-shaped repo: train.py fits a threshold from a train-only mount and writes a checkpoint;
model.py (agent code) loads it; eval.py (frozen, committed) reads a held-out file from an eval-only
mount, computes accuracy and writes it to $AUTORESEARCH_METRIC_FILE. The honest accuracy is 0.8."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from autoresearch.record.layout import eval_log, final_log, state_folder

from experiment_support import BACKENDS, git_env, log_of, metrics, require_backend, run_sh

from autoresearch.program import ConfigError, parse_program
from autoresearch.record.metrics import RunMetrics, host_check, load_verified

TRAIN = '''
import json, os
out = os.environ["AUTORESEARCH_OUT"]
xs = [int(v) for v in open(os.path.join(os.environ["TRAIN_DATA"], "train.txt")).read().split()]
json.dump({"threshold": sum(xs) / len(xs)}, open(os.path.join(out, "model.json"), "w"))
def attempt(what, fn):
    try:
        fn()
        print(f"PROBE {what}: done", flush=True)
    except OSError as e:
        print(f"PROBE {what}: {type(e).__name__}", flush=True)
attempt("read held-out", lambda: open(os.path.join(os.environ["HELD"], "held.txt")).read())
channel = os.path.join(os.path.dirname(out), ".metric")
attempt("write channel", lambda: (os.makedirs(channel, exist_ok=True),
                                  open(os.path.join(channel, "metric.json"), "w").write('{"value": 1.0}')))
json.dump({"value": 1.0}, open(os.path.join(out, "metric.json"), "w"))     # a forged metrics file
json.dump({"value": 1.0}, open(os.path.join(out, "metrics.json"), "w"))
print("val_acc: 1.0", flush=True)                                             # a forged printed metric
print("val_loss: 0.0001", flush=True)
'''
MODEL = '''
import json
def load(path):
    return json.load(open(path))
def predict(model, x):
    return int(x > model["threshold"])
'''
EVAL = '''
import json, os
import model
m = model.load(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json"))
rows = [ln.split() for ln in open(os.path.join(os.environ["HELD"], "held.txt")) if ln.strip()]
acc = sum(model.predict(m, int(x)) == int(y) for x, y in rows) / len(rows)
print("eval.py: accuracy", acc)
json.dump({"value": acc}, open(os.environ["AUTORESEARCH_METRIC_FILE"], "w"))
'''


def program(tmp: Path, metric: str = "{name: val_acc, direction: maximize, floor: 0.0, ceiling: 1.0}",
            run: str = "{mode: eval_command, command: [python, train.py]}", extra: str = "") -> str:
    run = run.rstrip("}") + f", env: {{HELD: '{tmp / 'held'}', TRAIN_DATA: '{tmp / 'train-data'}'}}}}"
    return (f"---\nmetric: {metric}\nbudget: {{train_seconds: 5, grace_seconds: 20, eval_seconds: 60}}\n"
            f"editable: [train.py, model.py, scratchpad.md]\nsandbox: {{memory_gb: 2}}\nrun: {run}\n"
            f"eval: {{command: [python, eval.py], files: [eval.py]}}\n"
            f"mounts:\n  - {{path: {tmp / 'train-data'}, stages: [train]}}\n"
            f"  - {{path: {tmp / 'held'}, stages: [eval, final]}}\n{extra}---\nprose\n")


def legacy_repo(tmp: Path, eval_py: str = EVAL, **kw: str) -> Path:
    for d, name, text in ((tmp / "train-data", "train.txt", "3 4 5 6 7"),     # threshold 5
                          (tmp / "held", "held.txt", "".join(f"{x} {int(x > 5) ^ (x in (2, 8))}\n"
                                                             for x in range(10)))):   # 8 of 10 agree
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    proj = tmp / "repo"
    proj.mkdir()
    for name, text in (("train.py", TRAIN), ("model.py", MODEL), ("eval.py", eval_py),
                       ("program.md", program(tmp, **kw)), ("scratchpad.md", "notes\n"), (".gitignore", "runs/\n")):
        (proj / name).write_text(text)
    env = git_env()
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "--no-verify", "-m", "legacy repo with its eval script"]):
        subprocess.run(cmd, cwd=proj, check=True, env=env)
    return proj


def _run(proj: Path, backend: str, run_id: str = "0001") -> dict:
    p = run_sh(proj, "-m", "baseline", "--backend", backend, timeout=240)
    assert (proj / "runs" / run_id / "metrics.json").is_file(), p.stdout + p.stderr
    return metrics(proj, run_id)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_frozen_eval_script_measures_the_checkpoint_and_forgeries_are_ignored(tmp_path, request, backend):
    require_backend(request, backend)
    proj = legacy_repo(tmp_path)
    m = _run(proj, backend)
    assert (m["status"], m["metric_value"], m["mode"]) == ("ok", 0.8, "eval_command"), m["reason"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    assert m["extra"]["eval_base"] == head and m["fingerprint"]["evaluator"].startswith("eval_command:")
    verified, problem = load_verified(proj / "runs" / "0001")
    assert problem is None and verified is not None and verified.metric_value == 0.8       # signed
    log = log_of(proj)
    assert "PROBE read held-out: FileNotFoundError" in log         # held-out data never reaches TRAIN
    assert "PROBE write channel: done" not in log                  # the eval channel is not TRAIN's
    assert "evaluate: ok val_acc 0.8" in log and "eval.py: accuracy" not in log   # its prints: eval.log only
    assert "eval.py: accuracy 0.8" in eval_log(proj, "0001").read_text()
    assert not (proj / "runs" / "0001" / "eval.log").exists() and not (state_folder(proj) / "runs" / "0001").exists()


@pytest.mark.slow
def test_an_agent_edit_to_the_eval_script_in_the_work_tree_changes_nothing(tmp_path, bwrap_available):
    proj = legacy_repo(tmp_path)
    (proj / "eval.py").write_text('import json, os\njson.dump({"value": 0.999}, '
                                  'open(os.environ["AUTORESEARCH_METRIC_FILE"], "w"))\n')
    m = _run(proj, "bwrap")
    assert (m["status"], m["metric_value"]) == ("ok", 0.8), m["reason"]


@pytest.mark.slow
def test_an_eval_script_writes_into_its_own_tree_and_the_project_is_untouched(tmp_path, bwrap_available):
    """Legacy eval code writes run folders beside itself (Hydra's outputs/): its work copy takes them,
    and the eval file it runs is the committed one even there."""
    writes = ("os.makedirs('outputs/2026-12-01', exist_ok=True)\n"
              "open('outputs/2026-12-01/eval.log', 'w').write('ran')\n"
              "open('eval.py', 'a').write('# rewritten by the eval run')\n")
    proj = legacy_repo(tmp_path, eval_py=EVAL.replace("import model\n", "import model\n" + writes))
    before = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=proj, capture_output=True,
                            text=True, check=True).stdout
    script = (proj / "eval.py").read_text()
    m = _run(proj, "bwrap")
    assert (m["status"], m["metric_value"]) == ("ok", 0.8), m["reason"]
    after = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=proj, capture_output=True,
                           text=True, check=True).stdout
    assert not (proj / "outputs").exists()
    harness = ("!! runs/", "?? .autoresearch/", "!! .autoresearch/")      # the run's own records
    assert [ln for ln in after.splitlines() if not ln.startswith(harness)] == before.splitlines()
    assert (proj / "eval.py").read_text() == script


@pytest.mark.slow
def test_an_eval_script_that_crashes_is_a_crash_with_the_reason(tmp_path, bwrap_available):
    proj = legacy_repo(tmp_path, eval_py=EVAL.replace("rows = ", "raise ValueError('labels: 1 0 1')\nrows = "))
    m = _run(proj, "bwrap")
    assert m["status"] == "crash" and m["metric_value"] is None
    assert "eval.py) exited with code 1 (ValueError)" in m["reason"] and "labels" not in m["reason"]


@pytest.mark.slow
def test_an_eval_script_that_writes_no_or_a_bad_metric(tmp_path, bwrap_available):
    proj = legacy_repo(tmp_path / "none", eval_py="print('done')\n")
    m = _run(proj, "bwrap")
    assert m["status"] == "crash" and "wrote no metric" in m["reason"]
    proj = legacy_repo(tmp_path / "bad", eval_py='import os\nopen(os.environ["AUTORESEARCH_METRIC_FILE"], "w")'
                                                 '.write(\'{"value": "0.9"}\')\n')
    m = _run(proj, "bwrap")
    assert m["status"] == "invalid" and "valid number" in m["reason"]


@pytest.mark.slow
def test_a_value_past_the_ceiling_is_invalid_with_eval_command(tmp_path, bwrap_available):
    proj = legacy_repo(tmp_path, metric="{name: val_acc, direction: maximize, floor: 0.0, ceiling: 0.5}")
    m = _run(proj, "bwrap")
    assert (m["status"], m["metric_value"]) == ("invalid", None) and "above metric.ceiling 0.5" in m["reason"]


@pytest.mark.slow
def test_a_forged_inline_value_below_the_floor_is_invalid(tmp_path, bwrap_available):
    """Issue 16: in inline mode a forged value below metric.floor was accepted."""
    proj = legacy_repo(tmp_path, metric="{name: val_loss, direction: minimize, floor: 0.5}",
                       run="{mode: inline, command: [python, train.py], metric_regex: 'val_loss: ([0-9.]+)'}")
    text = (proj / "program.md").read_text().replace("eval: {command: [python, eval.py], files: [eval.py]}\n", "")
    (proj / "program.md").write_text(text)
    m = _run(proj, "bwrap")
    assert (m["status"], m["metric_value"]) == ("invalid", None) and "below metric.floor 0.5" in m["reason"]


@pytest.mark.parametrize("mode", ["two_stage", "eval_command", "inline"])
def test_the_host_check_applies_floor_and_ceiling_in_every_mode(tmp_path, mode):
    (tmp_path / "runs" / "0001").mkdir(parents=True)
    for value, ok in ((0.05, False), (0.5, True), (0.95, False)):
        m = RunMetrics(run_id="0001", status="ok", metric_name="acc", metric_value=value, direction="maximize",
                       train_py_sha256="x", seed=0, budget_seconds=1, grace_seconds=1, sandbox="bwrap",
                       mode=mode, started_at="2026-01-01T00:00:00Z",
                       extra={"metric_floor": 0.1, "metric_ceiling": 0.9})
        assert (host_check(m) is None) == ok
        m.write(tmp_path / "runs" / "0001")                # signed as the runner would: re-checked on load
        got, _ = load_verified(tmp_path / "runs" / "0001")
        assert got is not None and (got.status == "ok") == ok and (got.metric_value is None) != ok


def test_eval_files_are_frozen_in_program_md():
    base = "---\nrun: {mode: eval_command, command: [python, train.py]}\neval: {command: python eval.py, files: [eval.py]}\n"
    p = parse_program(base + "editable: [train.py, model.py]\n---\n")
    assert p.eval is not None and p.eval.command == ["python", "eval.py"] and p.frozen_files() == ["eval.py"]
    assert not p.editable_matches("eval.py") and not p.editable_matches("EVAL.py")
    for pattern in ("eval.py", "'*.py'", "'**/*.py'"):
        with pytest.raises(ConfigError, match="frozen evaluation script"):
            parse_program(base + f"editable: [train.py, {pattern}]\n---\n")
    with pytest.raises(ConfigError, match="run.mode: eval_command"):
        parse_program("---\neval: {command: [python, eval.py], files: [eval.py]}\n---\n")
    with pytest.raises(ConfigError, match="needs eval"):
        parse_program("---\nrun: {mode: eval_command}\n---\n")
    with pytest.raises(ConfigError, match="no folder or glob"):
        parse_program("---\nrun: {mode: eval_command}\neval: {command: [python, e.py], files: ['src/']}\n---\n")
    with pytest.raises(ConfigError, match="floor 2 must be below ceiling 1"):
        parse_program("---\nmetric: {floor: 2, ceiling: 1}\n---\n")


def test_the_guard_denies_edits_to_the_eval_script(tmp_path):
    from autoresearch.guard.paths import Context, edit_problem
    from autoresearch.guard.policy import load_policy
    (tmp_path / "program.md").write_text(
        "---\nrun: {mode: eval_command, command: [python, train.py]}\neval: {command: [python, eval.py], "
        "files: [eval.py, lib/metric.py]}\neditable: [train.py, 'lib/model.py']\n---\n")
    for f in ("train.py", "eval.py", "lib/metric.py", "lib/model.py"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("x\n")
    ctx = Context(str(tmp_path), load_policy(str(tmp_path)))
    assert edit_problem(ctx, str(tmp_path / "train.py")) is None
    assert edit_problem(ctx, str(tmp_path / "lib/model.py")) is None
    for f in ("eval.py", "lib/metric.py", "Eval.py"):
        assert "not editable" in (edit_problem(ctx, str(tmp_path / f)) or "") or \
               "frozen" in (edit_problem(ctx, str(tmp_path / f)) or "")
    assert "frozen" in (edit_problem(ctx, str(tmp_path / "eval.py")) or "")
    assert json.loads((tmp_path / ".autoresearch" / "guard-policy.json").read_text())["frozen"] == \
        ["eval.py", "lib/metric.py"]


def test_init_with_an_eval_command_freezes_the_script_and_doctor_checks_it(tmp_path):
    from autoresearch.cli.envcheck import check_eval
    from autoresearch.program import load_program
    proj = legacy_repo(tmp_path)
    env = git_env()
    subprocess.run(["git", "rm", "-q", "program.md", "scratchpad.md"], cwd=proj, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "no setup yet"], cwd=proj, check=True, env=env)
    ar = [str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "autoresearch"), "init", "-C", str(proj),
          "--command", "python train.py", "--metric", "val_acc", "--direction", "maximize", "--no-check",
          "--backend", "bwrap", "--editable", "model.py"]
    p = subprocess.run(ar + ["--eval-command", "python eval.py"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    prog = load_program(proj)
    assert prog.run.mode == "eval_command" and prog.run.command == ["python", "train.py"]
    assert prog.eval is not None and prog.eval.command == ["python", "eval.py"] and prog.eval.files == ["eval.py"]
    assert "model.py" in prog.editable and not prog.editable_matches("eval.py")
    assert [c.level for c in check_eval(proj, prog)] == ["ok"]
    (proj / "eval.py").write_text("tampered\n")
    got = check_eval(proj, prog)
    assert got[0].level == "warn" and "the committed one runs" in got[0].found
    (proj / "other_eval.py").write_text("x\n")                       # not committed: refused, named
    p = subprocess.run(ar + ["--force", "--eval-command", "python other_eval.py"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "other_eval.py is not committed" in p.stdout
    p = subprocess.run(ar + ["--force", "--metric-regex", "val_acc: ([0-9.]+)"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "last resort" in p.stdout and "--eval-command" in p.stdout


@pytest.mark.slow
def test_final_runs_the_eval_command_with_the_final_mounts(tmp_path, bwrap_available):
    from autoresearch.cli.final import score_run
    from autoresearch.program import load_program
    proj = legacy_repo(tmp_path, eval_py=EVAL.replace("import model", "import model\nprint('stage', os.environ["
                                                      "'AUTORESEARCH_STAGE'])"))
    assert _run(proj, "bwrap")["metric_value"] == 0.8
    (tmp_path / "held" / "held.txt").write_text("9 1\n1 1\n")        # the held-out split final sees: 1 of 2
    got = score_run(proj, load_program(proj), "0001", backend="bwrap")
    assert (got.status, got.value) == ("ok", 0.5), got.reason
    assert "stage final" in final_log(proj, "0001").read_text()
