"""Scenarios 1 and 3: the research loop driven by the real CLI, with real training.

The model's turns are scripted; everything else is real: the guard allows the
agent's actions, ./run.sh trains and evaluates in the sandbox, the Stop hook
decides keep / revert, commits on a run branch, writes results.tsv, and sends
the agent on until the budget is spent or a human pauses it."""
from __future__ import annotations

import pytest

from e2e.fake_api import FakeAPI, end_turn, human, read, say, system_text, user_texts
from e2e.harness import Project, run_claude, run_python
from e2e.story import as_float, change, note, results, run_experiment, runs

pytestmark = [pytest.mark.claude, pytest.mark.slow, pytest.mark.usefixtures("sandbox")]

TRAIN_SECONDS = "3"     # real training, a few seconds per experiment
FLASH = ("import torch.nn.functional as F\n",
         "import torch.nn.functional as F\nimport flash_attn  # fused attention kernels\n")
TINY_LR = ("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3e-6")
TIMEOUT = 420           # a whole session; each eval takes seconds alone, much longer on a loaded 2-core box


def commits_on_run_branch(project: Project) -> list[str]:
    """Full messages of the commits the loop made (the run branch past `main`)."""
    out = project.git("log", "--format=%B%x00", "main..HEAD")
    return [m.strip() for m in out.split("\0") if m.strip()]


def test_three_experiments_baseline_crash_discard(project: Project, fake: FakeAPI) -> None:
    original = project.read("train.py")
    main_before = project.git("rev-parse", "main").strip()
    fake.script = [
        say("Start from the scratchpad, then measure the baseline.") + read("scratchpad.md"),
        run_experiment("baseline"),
        note("1 | baseline | see run 0001 | the reference"),
        end_turn("Baseline measured; over to the harness."),
        # -> the Stop hook keeps the baseline and sends the agent on
        say("Hypothesis: fused attention kernels give more steps in the same budget.") + change(*FLASH),
        run_experiment("flash_attn kernels: more steps per second"),
        note("2 | flash_attn | crashed: the module is not installed | no new packages, noted"),
        end_turn("It crashed: flash_attn is not installed here."),
        # -> the Stop hook reverts the crash and sends the agent on
        say("Hypothesis: a far lower learning rate is more stable.") + change(*TINY_LR),
        run_experiment("LR 3e-6 for stability"),
        note("3 | LR 3e-6 | barely learns in the budget | expect a discard"),
        end_turn("Lower LR recorded."),
        # -> the Stop hook discards it; 3 of 3 experiments spent, so the stop is allowed
    ]
    run = run_claude(project, fake.url, "Follow program.md. Start now.",
                     env={"AUTORESEARCH_MAX_EXPERIMENTS": "3", "AUTORESEARCH_TRAIN_SECONDS": TRAIN_SECONDS},
                     timeout=TIMEOUT)

    # The session ended by itself, cleanly, exactly when the budget was spent.
    assert run.result["subtype"] == "success" and not run.result["is_error"], run.describe()
    assert fake.overruns == 0 and max(r.step for r in fake.main_requests) == len(fake.script) - 1, run.describe()
    assert run.result["permission_denials"] == [], "an allowed action needed approval"
    assert any("autoresearch loop state" in t for t in _all_texts(fake.main_requests[0].body)), \
        "SessionStart(startup) did not give the model the loop state"
    told = "\n".join(fake.shown())
    assert "BASELINE" in told and "CRASHED" in told, "the Stop hook's outcomes did not reach the model"
    assert "3 experiments (1 kept, 1 discarded, 1 crashed)" in run.notices(), run.notices()

    # runs/: everything that ran, with its evidence.
    rs = runs(project.root)
    assert list(rs) == ["0001", "0002", "0003"], rs
    assert [rs[k]["status"] for k in rs] == ["ok", "crash", "ok"]
    base, tiny = rs["0001"]["metric_value"], rs["0003"]["metric_value"]
    assert tiny > base, f"LR 3e-6 ({tiny}) should be worse than the baseline ({base})"
    assert "flash_attn" in project.read("runs/0002/train.log")
    assert "import flash_attn" in project.read("runs/0002/diff.patch")
    assert "3e-6" in project.read("runs/0003/diff.patch")
    assert [rs[k]["description"] for k in rs] == [
        "baseline", "flash_attn kernels: more steps per second", "LR 3e-6 for stability"]

    # results.tsv: one row per decision, agreeing with runs/.
    rows = results(project.root)
    assert [r.status for r in rows] == ["keep", "crash", "discard"], rows
    assert [r.extra["run_id"] for r in rows] == ["0001", "0002", "0003"]
    assert as_float(rows[0].value) == pytest.approx(base, abs=1e-6)
    assert rows[1].value == "", "a crash must not record a metric value"
    assert as_float(rows[2].value) == pytest.approx(tiny, abs=1e-6)
    assert [r.description for r in rows] == [rs[k]["description"] for k in rs]

    # git: a run branch with exactly one commit (the baseline); the user's branch untouched.
    branch = project.branch()
    assert branch.startswith("autoresearch/"), branch
    assert {r.extra["branch"] for r in rows} == {branch}
    assert project.git("rev-parse", "main").strip() == main_before
    [msg] = commits_on_run_branch(project)
    assert "Autoresearch-Run: 0001" in msg and f"Autoresearch-Value: {base:.6f}" in msg, msg
    assert rows[0].commit == project.git("rev-parse", "--short=7", "HEAD").strip()
    # train.py is the baseline again, in the commit and on disk (crash and discard reverted).
    assert project.git("show", "HEAD:train.py") == original
    assert project.read("train.py") == original
    # scratchpad.md: the agent's whole log on disk; the commit holds it as of the keep.
    pad = project.read("scratchpad.md")
    for n in ("1 | baseline", "2 | flash_attn", "3 | LR 3e-6"):
        assert n in pad
    committed = project.git("show", "HEAD:scratchpad.md")
    assert "1 | baseline" in committed and "2 | flash_attn" not in committed


def test_pause_ends_the_session_and_continue_picks_up_the_state(project: Project, fake: FakeAPI) -> None:
    def researcher_pauses() -> None:
        p = run_python(project, "-m", "autoresearch", "pause", "checking", "the", "baseline")
        assert p.returncode == 0, p.stderr

    fake.script = [
        say("Scratchpad first.") + read("scratchpad.md"),
        run_experiment("baseline"),
        human(researcher_pauses) + note("1 | baseline | see run 0001 | the reference"),
        end_turn("Baseline measured."),
        # -> decided (kept), then the pause lets the stop through: the session ends here.
        # The researcher resumes and continues the same session (`claude -p ... --continue`):
        say("Back after the pause. The state says the baseline is in; next idea.") + change(*FLASH),
        run_experiment("flash_attn kernels: more steps per second"),
        note("2 | flash_attn | crashed: the module is not installed"),
        end_turn("Crashed; noted."),
        # -> decided (crash); 2 of 2 experiments in this session: the stop is allowed.
    ]
    env = {"AUTORESEARCH_MAX_EXPERIMENTS": "2", "AUTORESEARCH_TRAIN_SECONDS": TRAIN_SECONDS}
    first = run_claude(project, fake.url, "Follow program.md. Start now.", env=env, timeout=TIMEOUT)

    assert first.result["subtype"] == "success" and not first.result["is_error"], first.describe()
    assert max(r.step for r in fake.main_requests) == 3, "the pause did not end the session at the next stop"
    assert "paused (checking the baseline)" in first.notices(), first.notices()
    assert [r.status for r in results(project.root)] == ["keep"]
    assert project.path(".autoresearch/PAUSE").exists()
    base = runs(project.root)["0001"]["metric_value"]

    resumed = run_python(project, "-m", "autoresearch", "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not project.path(".autoresearch/PAUSE").exists()
    second = run_claude(project, fake.url, "Go on with program.md.", "--continue", env=env, timeout=TIMEOUT)

    assert second.result["subtype"] == "success" and not second.result["is_error"], second.describe()
    assert second.result["session_id"] == first.result["session_id"]
    assert fake.overruns == 0 and max(r.step for r in fake.main_requests) == len(fake.script) - 1
    # The resumed session was told the state: the run branch, the best (the baseline), the budget.
    resume_req = next(r for r in fake.main_requests if r.step == 4)
    ctx = [t for t in _all_texts(resume_req.body) if "autoresearch loop state" in t]
    assert ctx, "SessionStart(resume) did not inject the loop state"
    assert f"{base:.6f}" in ctx[-1] and project.branch() in ctx[-1] and "1 experiment left" in ctx[-1], ctx[-1]

    rows = results(project.root)
    assert [r.status for r in rows] == ["keep", "crash"]
    assert {r.extra["session"] for r in rows} == {first.result["session_id"]}
    assert project.read("train.py") == project.git("show", "HEAD:train.py")
    assert len(project.git("log", "--format=%H", "main..HEAD").split()) == 1


def _all_texts(body: dict) -> list[str]:
    """Every text in the request: the system prompt and all non-assistant messages."""
    return [system_text(body), *user_texts(body)]
