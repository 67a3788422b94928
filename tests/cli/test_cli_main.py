"""The command line itself: the entry points, the version, the parser, and the overnight driver's
reading of API errors (which ones end the night instead of being retried)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import __version__
from autoresearch.cli import main
from autoresearch.cli.headless import FATAL_KIND, FATAL_STATUS, fatal_error
from autoresearch.cli.app import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["init", "status", "plot", "doctor", "final", "export", "ledger", "keys", "overnight", "calibrate", "pause",
            "resume", "guard"]


def test_version_through_both_entry_points(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__
    p = subprocess.run([sys.executable, "-m", "autoresearch", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == __version__, p.stderr
    exe = ROOT / ".venv" / "bin" / "autoresearch"          # pyproject's `autoresearch.cli:main`
    if exe.exists():
        p = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.strip() == __version__, p.stderr


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)


def test_every_command_is_listed_in_order_and_has_help() -> None:
    [sub] = [a for a in build_parser()._actions if a.dest == "command"]
    assert list(sub.choices) == COMMANDS
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([name, "--help"])
        assert e.value.code == 0


def test_init_refuses_two_different_repos(capsys, tmp_path) -> None:
    assert main(["init", str(tmp_path / "a"), "-C", str(tmp_path / "b")]) == 2
    assert "give the repo once" in capsys.readouterr().err


@pytest.mark.parametrize("status,kind,want", [
    (401, None, FATAL_STATUS[401]), ("403", None, FATAL_STATUS[403]), (404, "whatever", FATAL_STATUS[404]),
    (None, "authentication_failed", FATAL_STATUS[401]), (None, "billing_error", FATAL_KIND["billing_error"]),
    ("not a number", "model_not_found", FATAL_STATUS[404]),
    (500, None, None), (529, "overloaded_error", None), (429, "rate_limit", None), (None, None, None),
])
def test_only_errors_no_retry_can_fix_are_fatal(status, kind, want) -> None:
    assert fatal_error(status, kind) == want


def test_fatal_messages_say_the_fix() -> None:
    assert all("Fix:" in m for m in [*FATAL_STATUS.values(), *FATAL_KIND.values()])
    assert "/login" in FATAL_STATUS[401] and "--resume" in FATAL_STATUS[401]


# --- scripts: JSON errors and exit codes --------------------------------------------------------

def _bad_project(tmp_path: Path) -> Path:
    (tmp_path / "program.md").write_text("---\nmetric: [this is not a metric\n---\nprose\n")
    return tmp_path


@pytest.mark.parametrize("command", [["status", "--json"], ["final", "--json"], ["export", "mlflow", "--json"]])
def test_a_json_command_that_cannot_start_prints_a_json_error(tmp_path, capsys, command) -> None:
    import json
    code = main([*command, "-C", str(_bad_project(tmp_path))])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and out["exit_code"] == 2 and out["command"] == command[0]
    assert out["schema_version"] == 1 and "program.md" in out["error"] and out["fix"] == "edit program.md"


def test_an_unexpected_failure_under_json_is_json_too(tmp_path, capsys, monkeypatch) -> None:
    import json

    import autoresearch.cli.status as status

    def boom(*a, **k):
        raise OSError("disk on fire")
    monkeypatch.setattr(status, "main", boom)
    code = main(["status", "--json", "-C", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["error"] == "OSError: disk on fire" and "without --json" in out["fix"]
    with pytest.raises(OSError):                      # a human without --json still gets the traceback
        main(["status", "-C", str(tmp_path)])


def test_every_json_report_carries_the_schema_version() -> None:
    from autoresearch.cli.doctor import DoctorReport
    from autoresearch.cli.export import ExportReport
    from autoresearch.cli.final import FinalRecord
    from autoresearch.cli.jsonout import SCHEMA_VERSION
    from autoresearch.cli.status import Report
    for model in (DoctorReport, ExportReport, FinalRecord, Report):
        assert model.model_fields["schema_version"].default == SCHEMA_VERSION, model


def test_every_command_documents_its_exit_codes() -> None:
    from autoresearch.cli.helpdoc import commands_markdown
    text = commands_markdown()
    sections = text.split("\n#### ")[1:]
    assert len(sections) >= len(COMMANDS)
    for sec in sections:
        assert "\nExit codes: `0` " in sec and "`2` " in sec, sec.splitlines()[0]
