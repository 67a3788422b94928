"""Scenario 4a: the same loop through `autoresearch overnight` (claude-agent-sdk driving the
real CLI), including an API outage that outlives the CLI's own retries: the driver resumes
the SAME session, and the night ends when the loop's budget is spent."""
from __future__ import annotations

import json

import pytest

from e2e.fake_api import FakeAPI, end_turn, read, say, user_texts
from e2e.harness import Project, run_python
from e2e.story import change, note, results, run_experiment, runs

pytestmark = [pytest.mark.claude, pytest.mark.slow, pytest.mark.usefixtures("sandbox")]

FLASH = ("import torch.nn.functional as F\n",
         "import torch.nn.functional as F\nimport flash_attn  # fused attention kernels\n")


def test_overnight_runs_the_loop_and_resumes_the_same_session_after_an_outage(
        project: Project, fake: FakeAPI, claude_cli) -> None:
    fake.script = [
        say("Reading the scratchpad before the first run.") + read("scratchpad.md"),
        run_experiment("baseline"),
        note("1 | baseline | see run 0001 | the reference"),
        end_turn("Baseline measured."),
        # -> the Stop hook keeps the baseline and sends the agent on; then the API goes down
        #    for longer than the CLI retries, the session ends in an error, the driver resumes it.
        say("Hypothesis: fused attention kernels give more steps per second.") + change(*FLASH),
        run_experiment("flash_attn kernels: more steps per second"),
        note("2 | flash_attn | crashed: the module is not installed"),
        end_turn("Crashed; noted."),
        # -> crash reverted; 2 of 2 experiments: the loop lets the agent stop, the night is over.
    ]
    fake.outage(step=4, requests=1)
    env = {"ANTHROPIC_BASE_URL": fake.url, "AUTORESEARCH_CLAUDE_CLI": str(claude_cli),
           "AUTORESEARCH_MAX_EXPERIMENTS": "2", "AUTORESEARCH_TRAIN_SECONDS": "3",
           "CLAUDE_CODE_MAX_RETRIES": "0",      # the outage outlives the CLI's own retries
           "AUTORESEARCH_RETRY_SECONDS": "1"}
    night = run_python(project, "-m", "autoresearch", "overnight", "--hours", "1", env=env, timeout=400)

    log = project.read(".autoresearch/overnight.log") if project.path(".autoresearch/overnight.log").exists() else ""
    assert night.returncode == 0, f"{night.stdout[-3000:]}\n{night.stderr[-3000:]}\n{log[-3000:]}"
    state = json.loads(project.read(".autoresearch/overnight.json"))
    assert state["status"] == "done", state
    assert state["sessions"] == 2 and state["errors"] == 1, state
    assert "529" in log and f"resuming {state['session_id']}" in log, log
    decisions = [line.split("\t")[2] for line in log.splitlines() if "\tdecision\t" in line]
    assert [d.split(": ", 1)[1].split(" ", 1)[0] for d in decisions] == ["keep", "crash"], log   # the morning log

    # The model saw one conversation: the resumed session carried everything before the outage.
    assert fake.overruns == 0 and max(r.step for r in fake.main_requests) == len(fake.script) - 1
    resumed = [r for r in fake.main_requests if r.step == 4]
    assert resumed and any("interrupted by an error" in t for t in user_texts(resumed[-1].body))
    assert [r.name for r in fake.results()][:2] == ["Read", "Bash"]

    # The loop's record is the same as in the interactive path.
    rows = results(project.root)
    assert [r.status for r in rows] == ["keep", "crash"], rows
    assert {r.extra["session"] for r in rows} == {state["session_id"]}
    assert [m["status"] for m in runs(project.root).values()] == ["ok", "crash"]
    assert project.branch().startswith("autoresearch/")
    assert project.read("train.py") == project.git("show", "HEAD:train.py")

