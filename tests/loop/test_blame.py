"""Issue 29, blame where it belongs: a crash the environment caused is recorded as such, with the
setting to change; it does not count as an experiment and reverts nothing, and the same cause twice
stops the loop for the human. A result bit-identical to the best says "no effect" and names what
may override the edit. Messages name the real training script and editable set. The Stop hook is
driven through its wired command in real git repositories; runs are fabricated (loop_support)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from autoresearch.ledger import LedgerRow
from autoresearch.loop import messages
from autoresearch.loop.allowance import Tally, remaining
from autoresearch.loop.decide import verdict, RunView, NO_EFFECT
from autoresearch.loop.state import LoopState
from autoresearch.program import Metric, parse_program
from loop_support import PROGRAM, Project

TRACE = "Traceback (most recent call last):\n  File \"train.py\", line 9, in <module>\n"


@pytest.fixture
def proj(tmp_path) -> Project:
    return Project.create(tmp_path / "proj")


def _stale_folder(proj: Project) -> None:
    (proj.path / "out").mkdir()                                  # a manual run's output, never committed
    (proj.path / "out" / "ckpt.pt").write_bytes(b"old")


def test_a_stale_output_folder_is_an_environment_crash_not_the_agents(proj):
    proj.baseline(2.0)
    _stale_folder(proj)
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    done = proj.state().model_copy()
    log = TRACE + "OSError: [Errno 30] Read-only file system: 'out/ckpt.pt'\n"
    rid = proj.fake_run(status="crash", reason="train.py exited with code 1: OSError: [Errno 30] Read-only file "
                        "system: 'out/ckpt.pt'", log=log)
    r = proj.decide()
    assert r.blocked and "ENVIRONMENT, not your change" in r.text and "run.outputs" in r.text, r.text
    assert "nothing was reverted" in r.text and "LEARNING_RATE = 1e-2" in proj.read()      # the change stays
    row = proj.rows()[-1]
    assert (row.status, row.run_id, row.value) == ("crash", rid, None)
    assert row.note.startswith("environment: read-only") and "add out to run.outputs" in row.note
    program = parse_program(PROGRAM)
    a = remaining(program, done, Tally(proj.rows(), row.branch, None), None)
    assert a.done == 1                                           # only the baseline counts
    # the same cause again: the loop stops for the human instead of crashing all night
    proj.fake_run(status="crash", reason="train.py exited with code 1", log=log)
    r = proj.decide()
    assert not r.blocked and "the loop stopped" in r.text and "ENVIRONMENT again" in r.text
    st = proj.state()                                            # overnight sees a finish, not "send it on"
    assert st.finished_at is not None and "environment crash twice: read-only" in st.finish_reason
    assert "LEARNING_RATE = 1e-2" in proj.read()


def test_a_read_only_path_outside_the_project_is_not_blamed_on_a_project_folder(proj):
    proj.baseline(2.0)
    (proj.path / "data").mkdir()                                 # untracked, but not what the run wrote
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", log=TRACE + "OSError: [Errno 30] Read-only file system: '/data/hf/x.bin'\n")
    assert "ENVIRONMENT" not in proj.decide().text


def test_a_crash_in_a_tracked_folder_is_still_the_agents(proj):
    proj.baseline(2.0)
    best = proj.read()
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", log=TRACE + "OSError: [Errno 30] Read-only file system: 'train.py'\n")
    r = proj.decide()
    assert "CRASHED (crash" in r.text and "ENVIRONMENT" not in r.text and proj.read() == best


def test_a_module_the_best_code_imports_too_is_the_environment(proj):
    proj.edit("import math", "import math\nimport wandb")
    proj.sh("git", "commit", "-qam", "wandb logging")
    proj.baseline(2.0)
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", log=TRACE + "ModuleNotFoundError: No module named 'wandb'\n")
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and "'wandb'" in r.text and "run.python" in r.text
    assert "LEARNING_RATE = 1e-2" in proj.read()


def test_a_module_only_the_change_imports_is_the_agents(proj):
    proj.baseline(2.0)
    best = proj.read()
    proj.edit("import math", "import math\nimport einops")
    proj.fake_run(status="crash", log=TRACE + "ModuleNotFoundError: No module named 'einops'\n")
    r = proj.decide()
    assert "CRASHED" in r.text and "ENVIRONMENT" not in r.text and proj.read() == best


def test_a_flat_repo_module_not_on_the_path_is_the_environment(proj):
    (proj.path / "utils.py").write_text("X = 1\n")
    proj.sh("git", "add", "utils.py")
    proj.sh("git", "commit", "-qm", "utils")
    proj.baseline(2.0)
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", log=TRACE + "ModuleNotFoundError: No module named 'utils'\n")
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and "repo's own module 'utils' (utils.py)" in r.text
    assert "run.source_roots" in r.text


@pytest.mark.parametrize("log,kind,setting", [
    ("RuntimeError: can't start new thread\n", "pids", "sandbox.pids"),
    ("ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient shared memory "
     "(shm).\n", "shm", "sandbox.shm_gb")])
def test_pids_and_shm_limits_are_the_environment_with_the_setting(proj, log, kind, setting):
    proj.baseline(2.0)
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", log=TRACE + log)
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and setting in r.text
    assert proj.rows()[-1].note.startswith(f"environment: {kind}")


def test_the_baseline_on_cuda_on_a_cpu_machine_is_the_environment(proj):
    proj.fake_run(status="crash", device="cpu",
                  log=TRACE + "AssertionError: Torch not compiled with CUDA enabled\n")
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and "GPU" in r.text and "train.py is back" not in r.text


HUB = ('Downloading: "https://w.example/backbone.pt" to /tmp/.cache/torch/hub/checkpoints/backbone.pt\n' + TRACE
       + "urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>\n")


def test_the_baselines_download_is_the_environment_and_names_sandbox_cache(proj):
    """Runs have no network: a baseline fetching pretrained weights is told where they must come from;
    a change that adds a download is the agent's."""
    proj.fake_run(status="crash", log=HUB)
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and "sandbox.cache" in r.text and "https://w.example/backbone.pt" in r.text, r.text
    assert proj.rows()[-1].note.startswith("environment: network")
    proj.baseline(2.0)
    best = proj.read()
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", log=HUB)
    r = proj.decide()
    assert "ENVIRONMENT" not in r.text and proj.read() == best


def test_a_change_that_asks_for_cuda_on_a_cpu_machine_is_the_agents(proj):
    proj.baseline(2.0)
    best = proj.read()
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", device="cpu", log=TRACE + "AssertionError: Torch not compiled with CUDA enabled\n")
    r = proj.decide()
    assert "ENVIRONMENT" not in r.text and proj.read() == best


def test_the_baseline_over_the_memory_limit_names_memory_gb_and_a_change_over_it_is_the_agents(proj):
    proj.fake_run(status="oom", reason="train.py went over the memory limit (8 GB) and was killed")
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and "sandbox.memory_gb" in r.text
    proj.baseline(2.0)
    proj.edit("N_LAYER = 2", "N_LAYER = 64")
    proj.fake_run(status="oom", reason="train.py went over the memory limit (8 GB) and was killed")
    assert "ENVIRONMENT" not in proj.decide().text


def test_the_baseline_timing_out_blames_start_up_and_names_grace(proj):
    proj.fake_run(status="timeout", reason="train.py ran past its budget 2 s + grace 30 s and was killed")
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and "budget.grace_seconds" in r.text


# --- no effect ------------------------------------------------------------------------------

INLINE_CFG = PROGRAM.replace("sandbox: {backend: none}", "sandbox: {backend: none}\nrun: {mode: inline, command: "
                             "[python, train.py, config/small.py, --lr, '3e-3'], metric_regex: 'val_bpb: ([0-9.]+)'}")


def test_a_result_bit_identical_to_the_best_says_no_effect_and_names_the_overriders(tmp_path):
    p = Project.create(tmp_path / "proj", program=INLINE_CFG)
    (p.path / "config").mkdir()
    (p.path / "config" / "small.py").write_text("LEARNING_RATE = 3e-3\n")
    p.sh("git", "add", "-A")
    p.sh("git", "commit", "-qm", "config")
    p.baseline(2.0)
    best = p.read()
    p.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    p.fake_run(value=2.0)
    r = p.decide()
    assert "NO EFFECT" in r.text and "bit-identical" in r.text and "overridden" in r.text, r.text
    assert "config file config/small.py" in r.text and "flag --lr 3e-3" in r.text
    assert p.rows()[-1].note == NO_EFFECT and p.read() == best


def test_a_tiny_difference_is_within_noise_not_no_effect():
    metric = Metric()
    assert verdict([RunView(run_id="2", status="ok", value=2.0)], 2.0, metric, 0.01, 0.02, True).note == NO_EFFECT
    assert verdict([RunView(run_id="2", status="ok", value=2.0 - 1e-12)], 2.0, metric, 0.01, 0.02, True).note \
        == "within noise"


# --- the real script's name -----------------------------------------------------------------

def test_messages_name_the_real_training_script_and_editable_set():
    program = parse_program(PROGRAM.replace("editable: [train.py, scratchpad.md]",
                                            "editable: [trainer.py, model.py, scratchpad.md]\nrun: "
                                            "{train_script: trainer.py}"))
    a = remaining(program, LoopState(), Tally([], "b", None), None)
    row = LedgerRow(commit="abc1234", value=None, memory_gb=None, status="crash", description="x", experiment=2,
                    run_id="0002", run_status="crash", branch="b", phase="tune", runs=["0002"],
                    decided_at=datetime.now(timezone.utc), prev_best=2.0)
    from autoresearch.loop.decide import Verdict
    texts = [messages.outcome(program, Verdict(action=act, value=v, delta=d, improvement=None, threshold=0.01,
                                               note=n), row, "c", a)
             for act, v, d, n in (("crash", None, None, "crash"), ("discard", 2.1, 0.1, "worse"),
                                  ("keep", 1.9, -0.1, ""))]
    texts.append(messages.new_phase_next(program, a))
    for t in texts:
        assert "train.py" not in t.replace("trainer.py", ""), t
        assert "trainer.py" in t
    assert "trainer.py (and the editable model.py)" in texts[0]


def test_a_baseline_that_evaluates_inside_training_gets_the_eval_command_hint(tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    p = Project.create(tmp_path / "proj", program=PROGRAM.replace(
        "sandbox: {backend: none}", f"sandbox: {{backend: none}}\nmounts: [{{path: {held}, stages: [eval, final]}}]"))
    p.fake_run(status="crash", log=TRACE + f"FileNotFoundError: [Errno 2] No such file or directory: '{held}/val.bin'\n")
    r = p.decide()
    assert "ENVIRONMENT" in r.text and "evaluates inside training" in r.text and "eval.command" in r.text
    p.baseline(2.0)                                    # a change that reads held-out data is the agent's
    p.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    p.fake_run(status="crash", log=TRACE + f"FileNotFoundError: [Errno 2] No such file or directory: '{held}/val.bin'\n")
    assert "ENVIRONMENT" not in p.decide().text


def test_a_stale_folder_named_by_its_work_copy_path_is_found(proj):
    proj.baseline(2.0)
    _stale_folder(proj)
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    proj.fake_run(status="crash", log=TRACE + "FileExistsError: [Errno 17] File exists: "
                  "'/var/state/p1/runs/0002/work-train/out/ckpt.pt'\n")
    r = proj.decide()
    assert "ENVIRONMENT" in r.text and "add out to run.outputs" in r.text
    assert proj.rows()[-1].note.startswith("environment: stale-outputs")
