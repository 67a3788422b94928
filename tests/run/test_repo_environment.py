"""The repo's own environment (issue 16): run.python (its venv runs TRAIN and the model server),
run.env (variables in both stages) and mounts (host folders per stage, read-only), for real under
the sandbox; and program.md's validation of them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from autoresearch.record.layout import eval_log

from experiment_support import BACKENDS, log_of, make_project, metrics, require_backend, run_sh, with_main_prelude

from autoresearch.program import ConfigError, load_program, parse_program

pytestmark = pytest.mark.usefixtures("data_dir")

# module level: runs in TRAIN (train.log) and again when the model server imports train.py (eval.log)
PROBE = '''
import json as _j, os as _o, sys as _s
try:
    import only_in_repo_venv as _m
    _marker = _m.MARK
except ImportError:
    _marker = None
def _can_read(p):
    try:
        return open(p).read().strip()
    except OSError as e:
        return type(e).__name__
print("ENV-PROBE " + _j.dumps({"exe": _s.executable, "prefix": _s.prefix, "marker": _marker,
      "wandb": _o.environ.get("WANDB_MODE"), "hf": _o.environ.get("HF_HOME"),
      "train_data": _can_read(_o.environ["PROBE_TRAIN"] + "/part.txt"),
      "eval_data": _can_read(_o.environ["PROBE_EVAL"] + "/held.txt"),
      "via_link": _can_read("data_link/part.txt"),
      "cache_val": _o.path.exists(_o.environ["PROBE_CACHE"] + "/data/val/val.bin"),
      "cache_meta": _o.path.exists(_o.environ["PROBE_CACHE"] + "/data/meta.json")}), file=_s.stderr, flush=True)
'''


def _probes(text: str) -> list[dict]:
    return [json.loads(ln.split("ENV-PROBE ", 1)[1]) for ln in text.splitlines() if "ENV-PROBE " in ln]


def _repo_venv(dest: Path) -> Path:
    """A venv as a legacy repo has one: its own marker package; torch and numpy from the harness's
    site-packages through a .pth (the model server needs them), the rest of the system's."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(dest)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(dest / "bin" / "python"), "-c", purelib],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "only_in_repo_venv.py").write_text('MARK = "repo-venv-marker"\n')
    (site / "harness.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return dest / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_repo_venv_env_and_train_only_mount_reach_the_stages(tmp_path, request, backend, data_dir):
    require_backend(request, backend)
    cache = tmp_path / "cache"                      # a mounted cache that holds the prepared data
    shutil.copytree(data_dir, cache / "data")
    py = _repo_venv(tmp_path / "repo-venv")
    train_data, held_out = tmp_path / "train-data", tmp_path / "held-out"
    for d, f, text in ((train_data, "part.txt", "train-bytes"), (held_out, "held.txt", "held-bytes")):
        d.mkdir()
        (d / f).write_text(text)
        d.chmod(0o755)
    extra = (f"mounts:\n  - {{path: {train_data}, stages: [train]}}\n  - {{path: {held_out}, stages: [eval]}}\n"
             f"  - {{path: {cache}, stages: [train, eval]}}\n"
             f"run:\n  python: {py}\n  env: {{WANDB_MODE: offline, HF_HOME: /data/hf, "
             f"PROBE_TRAIN: '{train_data}', PROBE_EVAL: '{held_out}', PROBE_CACHE: '{cache}'}}\n")
    proj = make_project(tmp_path / "p", train_py=with_main_prelude((Path(__file__).parents[2] / "train.py").read_text(),
                                                                    "pass", helpers=PROBE), extra=extra)
    (proj / "data_link").symlink_to(train_data)
    for d, _, _ in os.walk(tmp_path):
        Path(d).chmod(0o755)
    p = run_sh(proj, "-m", "repo env", "--backend", backend, "--budget", "2", AUTORESEARCH_DATA=str(cache / "data"))
    assert p.returncode == 0, p.stdout + p.stderr
    train = _probes(log_of(proj))
    evals = _probes(eval_log(proj, "0001").read_text())
    assert train and evals, "train.py's module code ran in both stages"
    for probe in train + evals:
        assert probe["exe"] == str(py) and probe["prefix"] == str(py.parent.parent), "the repo's venv ran"
        assert probe["marker"] == "repo-venv-marker"
        assert (probe["wandb"], probe["hf"]) == ("offline", "/data/hf")
        assert probe["cache_meta"] and not probe["cache_val"], "a mount never shows the val split"
    assert train[0]["train_data"] == "train-bytes" and train[0]["via_link"] == "train-bytes"
    assert train[0]["eval_data"] != "held-bytes", "held-out data is not shown to TRAIN"
    for probe in evals:
        assert probe["train_data"] != "train-bytes" and probe["via_link"] != "train-bytes"
        assert probe["eval_data"] == "held-bytes"
    m = metrics(proj)
    assert m["status"] == "ok", m["reason"]
    assert m["fingerprint"]["interpreter"].startswith(f"{py} 3."), "the interpreter is part of the fingerprint"


# ------------------------------------------------------------------ program.md validation

def _front(body: str) -> str:
    return f"---\n{body}\n---\n"


@pytest.mark.parametrize("body, words", [
    ("run: {env: {PATH: /x}}", ["run.env", "PATH cannot be set"]),
    ("run: {env: {LD_PRELOAD: /x.so}}", ["LD_PRELOAD cannot be set"]),
    ("run: {env: {PYTHONPATH: /x}}", ["PYTHONPATH cannot be set"]),
    ("run: {env: {AUTORESEARCH_SEED: '1'}}", ["AUTORESEARCH_SEED cannot be set"]),
    ("run: {env: {CUDA_VISIBLE_DEVICES: '0'}}", ["sandbox.gpus"]),
    ("run: {env: {'1BAD': x}}", ["not a variable name"]),
    ("run: {env: {FLAG: yes}}", ["not a string", "quote it"]),
    ("run: {env: {A: \"x\\ny\"}}", ["newline"]),
    ("run: {env: [A]}", ["mapping"]),
    ("run: {python: ../other/bin/python}", ["run.python", "without '..'"]),
    ("mounts: [{path: data, stages: [train]}]", ["mounts.0.path", "absolute"]),
    ("mounts: [{path: /nonexistent-autoresearch-x, stages: [train]}]", ["does not exist"]),
    ("mounts: [{path: /etc, stages: [train]}]", ["system folder"]),
    ("mounts: [{path: /usr/share, stages: []}]", ["mounts.0.stages"]),
    ("mounts: [{path: /usr/share, stages: [test]}]", ["mounts.0.stages"]),
    ("mounts: [{path: /usr/share}]", ["mounts.0.stages", "required"]),
])
def test_program_md_rejects_a_bad_environment_with_the_field(body, words):
    with pytest.raises(ConfigError) as e:
        parse_program(_front(body))
    assert all(w in str(e.value) for w in words), str(e.value)


def test_numbers_in_run_env_become_strings_and_a_good_environment_loads(tmp_path):
    prog = parse_program(_front(f"run: {{env: {{OMP_NUM_THREADS: 4, WANDB_MODE: offline}}}}\n"
                                f"mounts: [{{path: {tmp_path}, stages: [eval, final]}}]"))
    assert prog.run.env == {"OMP_NUM_THREADS": "4", "WANDB_MODE": "offline"}
    assert prog.mounts[0].stages == ["eval", "final"] and prog.run.python is None


def test_a_credentials_folder_is_never_mounted(tmp_path):
    (tmp_path / ".ssh").mkdir()
    (tmp_path / "keys").symlink_to(tmp_path / ".ssh")
    for p in (tmp_path / ".ssh", tmp_path / "keys"):
        with pytest.raises(ConfigError, match="credentials folder"):
            parse_program(_front(f"mounts: [{{path: {p}, stages: [train]}}]"))


def test_load_checks_run_python_and_mounts_against_the_project(tmp_path):
    proj = tmp_path / "p"
    (proj / "data").mkdir(parents=True)
    (proj / "program.md").write_text(_front(f"run: {{python: .venv/bin/python}}\n"
                                            f"mounts: [{{path: {proj / 'data'}, stages: [train]}}, "
                                            f"{{path: {tmp_path}, stages: [eval]}}]"))
    with pytest.raises(ConfigError) as e:
        load_program(proj)
    msg = str(e.value)
    assert f"run.python: {proj / '.venv/bin/python'} is not an executable file" in msg
    assert "mounts.0.path" in msg and "inside the project" in msg
    assert "mounts.1.path" in msg and "around the project" in msg
    py = _repo_venv(proj / ".venv")
    (proj / "program.md").write_text(_front("run: {python: .venv/bin/python}"))
    assert load_program(proj).run.python == ".venv/bin/python" and py.is_file()


# ------------------------------------------------------------------ what each stage is given; doctor

def test_each_stage_gets_only_its_mounts_and_the_repo_interpreter(tmp_path):
    from autoresearch.run.specs import environment_mounts, python_of, repo_env
    from autoresearch.sandbox.bwrap import BwrapBackend
    proj = tmp_path / "p"
    proj.mkdir()
    py = _repo_venv(proj / ".venv")
    dirs = {s: tmp_path / s for s in ("tr", "ev", "fi")}
    for d in dirs.values():
        d.mkdir()
    (tmp_path / "tr-link").symlink_to(dirs["tr"])
    (proj / "program.md").write_text(_front(
        f"run: {{python: .venv/bin/python, env: {{WANDB_MODE: offline}}}}\n"
        f"mounts: [{{path: {tmp_path / 'tr-link'}, stages: [train]}}, {{path: {dirs['ev']}, stages: [eval]}}, "
        f"{{path: {dirs['fi']}, stages: [final]}}]"))
    prog, b = load_program(proj), BwrapBackend()
    targets = {s: {m.target for m in environment_mounts(b, prog, proj, s)} for s in ("train", "eval", "final")}
    assert {str(tmp_path / "tr-link"), str(dirs["tr"])} <= targets["train"], "the link and its real path"
    assert str(dirs["ev"]) not in targets["train"] and str(dirs["fi"]) not in targets["train"]
    assert targets["eval"] & {str(dirs["tr"]), str(dirs["fi"])} == set() and str(dirs["ev"]) in targets["eval"]
    assert str(dirs["fi"]) in targets["final"] and str(dirs["ev"]) not in targets["final"]
    assert not any(m.writable for s in targets for m in environment_mounts(b, prog, proj, s)), "read-only"
    assert python_of(b, prog, proj) == str(py), "the project's venv, not the harness's Python"
    env = repo_env({"PATH": "/usr/bin", "OMP_NUM_THREADS": "2"}, prog, proj)
    assert env["PATH"].startswith(f"{py.parent}:") and env["WANDB_MODE"] == "offline"


def test_doctor_runs_the_repo_interpreter_and_reads_the_mounts(tmp_path):
    from autoresearch.cli.envcheck import check_interpreter, check_mounts
    proj = tmp_path / "p"
    proj.mkdir()
    _repo_venv(proj / ".venv")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    data = tmp_path / "d"
    data.mkdir()
    prog = parse_program(_front(f"run: {{python: .venv/bin/python, env: {{OMP_NUM_THREADS: 1}}}}\n"
                                f"mounts: [{{path: {data}, stages: [train]}}]"))
    ok = check_interpreter(proj, prog)
    assert ok.level == "ok" and "torch" in ok.found and f"Python {sys.version.split()[0]}" in ok.found
    checks = check_mounts(proj, prog)
    assert [c.level for c in checks] == ["ok", "warn"] and "OMP_NUM_THREADS" in checks[1].found
    data.rmdir()
    assert check_mounts(proj, prog)[0].level == "fail", "a mount gone since load is a failure"
    no_torch = parse_program(_front(f"run: {{python: {bare / 'bin' / 'python'}}}"))
    bad = check_interpreter(proj, no_torch)
    if subprocess.run([str(bare / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode != 0:
        assert bad.level == "fail" and "cannot import torch" in bad.found and "pip install torch" in bad.fix
        inline = parse_program(_front(f"run: {{python: {bare / 'bin' / 'python'}, mode: inline, "
                                      "command: [python, train.py], metric_regex: 'acc=([0-9.]+)'}"))
        quiet = check_interpreter(proj, inline)           # no model server of ours runs under it: no torch needed
        assert quiet.level == "ok" and "inline mode does not need" in quiet.found, quiet
    assert check_interpreter(proj, parse_program(_front("run: {}"))).level == "info"
