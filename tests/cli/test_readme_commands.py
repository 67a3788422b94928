"""README.md's command tables are generated from the argparse parsers (cli/helpdoc.py, through a
cog block), so a flag added, renamed or reworded without `cog -r README.md` fails here."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from autoresearch.cli.app import build_parser
from autoresearch.cli.helpdoc import commands_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_command_tables_are_current():
    p = subprocess.run([sys.executable, "-m", "cogapp", "--check", "README.md"], cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode == 0, ("README.md's command tables are stale: regenerate them with "
                               f".venv/bin/cog -r README.md\n{p.stdout}{p.stderr}")


def test_cog_check_catches_a_stale_table(tmp_path):
    """The check is real: a README whose table lost a flag fails it."""
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    assert "| `--restart-clock` |" in text
    readme.write_text(text.replace("| `--restart-clock` |", "| `--restart` |"))
    p = subprocess.run([sys.executable, "-m", "cogapp", "--check", str(readme)], cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode != 0


def test_every_subcommand_and_flag_is_in_the_tables():
    md = commands_markdown()
    ap = build_parser()
    sub = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, parser in sub.choices.items():
        assert f"#### `autoresearch {name}" in md, name
        for act in parser._actions:
            for flag in act.option_strings:
                if act.help != "==SUPPRESS==" and flag not in ("-h", "--help"):
                    assert flag in md, (name, flag)
    assert "--sandbox" not in md, "a deprecated alias is not advertised"
    assert "#### `./run.sh`" in md and "`-m, --message" in md


def test_one_flag_name_per_idea():
    """-C/--project on every project command, --backend wherever a sandbox is chosen, --json for
    machine-readable output: no second spelling of the same idea."""
    md = commands_markdown()
    sections = {s.split("`")[1]: s for s in md.split("#### ")[1:]}
    for name, text in sections.items():
        if name.startswith("autoresearch ") and name != "autoresearch guard explain":
            assert "`-C, --project DIR`" in text, name
        assert "--sandbox" not in text and "--project-dir" not in text and "--output-json" not in text, name
    assert sum("--backend" in t for t in sections.values()) >= 4       # run.sh, init, final, calibrate
    assert all("--json" in sections[f"autoresearch {c}"] for c in ("status", "doctor", "final", "export"))
    assert shutil.which("cog", path=str(Path(sys.executable).parent)), "cogapp is in the test extra"


def test_the_settings_reference_names_every_setting_with_its_default():
    """README's program.md table is generated from the models: every field, nested ones too, with
    the model's own default and choices (a backend added to the registry shows up in it)."""
    from autoresearch.cli.settingsdoc import settings_markdown
    from autoresearch.program import Program
    from autoresearch.registry import BACKEND_CHOICES
    md = settings_markdown()
    for name in Program.model_fields:
        assert name == "body" or f"| `{name}` |" in md, name
    for key in ("sandbox.memory_gb", "budget.train_seconds", "executor.kind", "phases[].max_experiments"):
        assert f"| `{key}` |" in md, key
    row = next(r for r in md.splitlines() if r.startswith("| `sandbox.backend` |"))
    assert all(f"'{b}'" in row for b in BACKEND_CHOICES) and "`'auto'`" in row
    assert "| `budget.train_seconds` | float | `300` |" in md
