"""The harness itself, against the real CLI: the fake API speaks the protocol the CLI
needs, tool results reach the model, and nothing touches the machine's user."""
from __future__ import annotations

import json

import pytest

from e2e.fake_api import FakeAPI, end_turn, read, say
from e2e.harness import Project, run_claude

pytestmark = pytest.mark.claude

# No experiments in these sessions: with a zero budget the loop's Stop hook lets the
# first end of turn through, so the protocol is tested without the loop sending the model on.
NO_LOOP = {"AUTORESEARCH_MAX_EXPERIMENTS": "0"}


def test_model_reads_a_file_and_ends_its_turn(project: Project, fake: FakeAPI) -> None:
    fake.script = [
        say("Let me read the research program first.") + read("program.md"),
        end_turn("The objective is val_bpb; ready to start."),
    ]
    run = run_claude(project, fake.url, "Read program.md and tell me the objective.", env=NO_LOOP)

    assert run.returncode == 0, run.describe()
    res = run.result
    assert res["subtype"] == "success" and res["is_error"] is False, run.describe()
    assert res["result"] == "The objective is val_bpb; ready to start."
    assert res["num_turns"] == 2
    assert fake.overruns == 0
    assert [r.step for r in fake.main_requests] == [0, 1]
    assert all(r.body.get("stream") is True for r in fake.main_requests)
    # Offline means offline: nothing but the Messages API was asked for anything.
    assert {r.path for r in fake.requests} == {"/v1/messages"}

    [got] = fake.results()
    assert got.name == "Read" and not got.is_error
    assert got.input["file_path"] == str(project.path("program.md"))
    assert "metric:" in got.text and "val_bpb" in got.text      # the file's content reached the model
    assert any("Read program.md" in t for t in fake.shown())


def test_cli_keeps_to_the_private_home_and_never_trusts_the_folder(project: Project, fake: FakeAPI) -> None:
    fake.script = [end_turn("Nothing to do.")]
    run = run_claude(project, fake.url, "hello", env=NO_LOOP)
    assert run.result["subtype"] == "success", run.describe()
    config = project.home / ".claude" / ".claude.json"
    assert config.is_file(), "the CLI did not use the temporary CLAUDE_CONFIG_DIR"
    projects = json.loads(config.read_text()).get("projects", {})
    assert not projects.get(str(project.root), {}).get("hasTrustDialogAccepted")


def test_broken_stream_falls_back_to_a_plain_message(project: Project) -> None:
    """If streaming breaks, the CLI retries without streaming; the fake answers both ways."""
    with FakeAPI([say("Checking.") + read("train.py"), end_turn("Seen it.")],
                 project=str(project.root), broken_streams=1) as api:
        run = run_claude(project, api.url, "look at train.py", env=NO_LOOP)
    assert run.result["subtype"] == "success", run.describe()
    assert run.result["result"] == "Seen it."
    assert any(r.body.get("stream") is False for r in api.main_requests)
    [got] = api.results()
    assert got.name == "Read" and "build_model" in got.text
