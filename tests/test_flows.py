"""The flow table (autoresearch/record/flows.py, ARCHITECTURE.md rule 10) is consistent with itself: no
place holds what one of its readers may not see, every stage's scratch is outside the project, and
the agent's view of runs/ is a short list of names trusted code writes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.record import flows as F


@pytest.mark.parametrize("flow", F.FLOWS, ids=[f.name for f in F.FLOWS])
def test_no_reader_is_shown_what_it_may_not_see(flow):
    """holds = content + what the untrusted writers saw; a private place (one per sandbox) is
    read only by the stage that wrote it, so there a reader sees only what it saw itself."""
    for reader in flow.readers:
        held = (flow.content | F.SEES[reader]) if flow.private and reader in flow.writers else flow.holds
        assert held <= F.MAY_SEE[reader], f"{flow.name}: {reader} would be shown {sorted(held - F.MAY_SEE[reader])}"


def test_held_out_text_never_reaches_the_agent_or_train():
    for actor in (F.AGENT_READ, F.AGENT_EDIT, F.TRAIN):
        for flow in F.readable_by(actor):
            assert not (flow.holds & {"val", "test", "secret"}) or flow.private and actor in flow.writers, flow


def test_what_agent_code_writes_is_read_by_the_agent_only_from_trainings_own_channels():
    """Nothing an evaluation stage writes lands where the agent or a later TRAIN reads."""
    for flow in F.FLOWS:
        if set(flow.writers) & {F.SERVER, F.EVAL_COMMAND, F.FINAL}:
            assert not set(flow.readers) & {F.AGENT_READ, F.AGENT_EDIT} and (
                F.TRAIN not in flow.readers or flow.private), flow


def test_stage_scratch_and_logs_are_outside_the_project():
    for flow in F.FLOWS:
        if set(flow.writers) & {F.SERVER, F.EVAL_COMMAND, F.FINAL}:
            assert flow.base in ("state", "sandbox"), flow


def test_the_agents_runs_entries_are_names_trusted_code_writes():
    assert F.RUN_AGENT_FILES == {"metrics.json", "train.log", "diff.patch", "decision.json", "queue.json"}
    assert F.RUN_AGENT_DIRS == {"snapshot"}
    for name in ("out", "eval.log", ".sandbox", ".metric", ".running", "CLAUDE.md", "model.pt"):
        assert not F.run_entry_readable(name), name
    assert F.run_entry_readable("train.py") and F.run_entry_readable("nano.py", "nano.py")
    assert not F.run_entry_readable("Metrics.json")
    for flow in F.FLOWS:
        if flow.base == "run" and F.AGENT_READ in flow.readers:
            assert flow.writers == (F.HOST,) or flow.name == "train log", flow


def test_state_dir_is_keyed_by_a_project_id_and_outside_home_projects(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "st")}
    assert F.state_dir("ab12", env) == str(tmp_path / "st" / "autoresearch" / "projects" / "ab12")
    assert F.state_dir("ab12", {"AUTORESEARCH_STATE": str(tmp_path / "x")}) == str(tmp_path / "x" / "projects" / "ab12")
    for bad in ("", "../x", "AB12", "a/b"):
        with pytest.raises(ValueError):
            F.state_dir(bad, env)


def test_the_flow_table_imports_nothing_but_os():
    """The guard imports it on every tool call: it must not pull typing, dataclasses, enum."""
    root = str(Path(F.__file__).resolve().parents[2])
    code = (f"import sys, os; sys.path.insert(0, {root!r}); import autoresearch; before = set(sys.modules); "
            "import autoresearch.record.flows; print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(eval(out)) <= {"autoresearch.frontdoor", "autoresearch.record", "autoresearch.record.flows", "__future__"}, out   # __future__: the guard loads it anyway


def test_the_readmes_threat_model_table_is_the_flow_table():
    """README.md's cog block prints flows_markdown(); tests/cli/test_readme_commands.py runs
    `cog --check README.md` over every block, this one included."""
    from autoresearch.cli.helpdoc import flows_markdown
    readme = (Path(F.__file__).resolve().parents[2] / "README.md").read_text()
    table = flows_markdown()
    assert table in readme, "regenerate the README's tables: .venv/bin/cog -r README.md"
    assert all(f"| {f.name} |" in table for f in F.FLOWS)
    assert "from autoresearch.cli.helpdoc import flows_markdown" in readme
