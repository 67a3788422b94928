"""Scenario: a wave through the real CLI and the scripted model, with real training (local
executor, 2 slots). The agent queues three variants (`./run.sh -m ... --queue`, editing between),
waits for them (`./run.sh --wait`), notes the wave and ends its turn; the Stop hook decides the
wave whole: a ledger row per run, the best comparable run judged, the tree left at the best."""
from __future__ import annotations

import pytest

from e2e.fake_api import FakeAPI, bash, end_turn, read, say
from e2e.harness import Project, run_claude
from e2e.story import change, note, results, runs

pytestmark = [pytest.mark.claude, pytest.mark.slow, pytest.mark.usefixtures("sandbox")]

TIMEOUT = 480


def queue(why: str):
    return bash(f'./run.sh -m "{why}" --queue', description="queue one variant into the wave")


def test_a_wave_queued_waited_and_decided_by_the_stop_hook(project: Project, fake: FakeAPI) -> None:
    program = project.read("program.md").replace("  kind: local ", "  kind: local\n  slots: 2\n ", 1)
    project.path("program.md").write_text(program)
    project.git("commit", "-q", "-am", "two slots")
    fake.script = [
        say("Scratchpad first, then a screening wave of learning rates.") + read("scratchpad.md"),
        queue("baseline, LR 3e-3"),
        change("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3e-6"),
        queue("LR 3e-6"),
        change("LEARNING_RATE = 3e-6", "LEARNING_RATE = 1e-2"),
        queue("LR 1e-2"),
        bash("./run.sh --wait", description="wait for the wave"),
        note("1 | wave: LR 3e-3, 3e-6, 1e-2 | see the table | screening"),
        end_turn("Wave done; over to the harness."),
    ]
    run = run_claude(project, fake.url, "Follow program.md. Start now.",
                     env={"AUTORESEARCH_MAX_EXPERIMENTS": "3", "AUTORESEARCH_TRAIN_SECONDS": "3"},
                     timeout=TIMEOUT)

    assert run.result["subtype"] == "success" and not run.result["is_error"], run.describe()
    assert run.result["permission_denials"] == [], "an allowed action needed approval"
    assert fake.overruns == 0, run.describe()
    told = "\n".join(fake.shown())
    assert "wave of 3 runs" in told + run.notices(), told[-2000:]

    rs = runs(project.root)
    assert list(rs) == ["0001", "0002", "0003"], rs
    assert all(rs[k]["status"] == "ok" for k in rs), {k: rs[k].get("reason") for k in rs}
    assert [rs[k]["description"] for k in rs] == ["baseline, LR 3e-3", "LR 3e-6", "LR 1e-2"]
    best = min(rs, key=lambda k: rs[k]["metric_value"])
    rows = results(project.root)
    assert sorted(r.extra["run_id"] for r in rows) == ["0001", "0002", "0003"], rows   # a row per run
    [keep] = [r for r in rows if r.status == "keep"]
    assert keep.extra["run_id"] == best
    assert {r.status for r in rows if r is not keep} == {"discard"}
    # the tree is at the best: its code on disk and committed on the run branch
    assert project.read("train.py") == project.read(f"runs/{best}/train.py")
    assert project.git("show", "HEAD:train.py") == project.read(f"runs/{best}/train.py")
