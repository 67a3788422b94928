"""program.md: the shipped plan parses, and every kind of mistake names its field and its line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoresearch.program import ConfigError, load_program, parse_program

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "program.md").read_text()


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing needle."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_program(text)
    return str(e.value)


def test_shipped_program_has_a_four_phase_plan_ending_with_web_moonshot():
    p = parse_program(SHIPPED)
    assert p.metric.name == "val_bpb" and p.metric.direction == "minimize"
    names = [ph.name for ph in p.phases]
    assert names == ["hyperparameters", "architecture", "optimisation", "moonshot"]
    assert p.phase == names[0]
    assert [ph.web for ph in p.phases] == [False, False, False, True]
    assert all(ph.focus and ph.max_experiments >= 1 for ph in p.phases)
    assert p.editable_patterns() == ["train.py", "scratchpad.md"]
    assert p.budget.train_seconds == 300 and p.run.mode == "two_stage"


def test_shipped_prose_covers_loop_rules_and_scratchpad_discipline():
    body = parse_program(SHIPPED).body
    for heading in ("## The loop", "## The rules", "## Phases", "## The scratchpad"):
        assert heading in body
    for section in ("Current best", "Experiment log", "Hypotheses", "Next experiments", "Failed patterns"):
        assert section in body
        assert f"## {section}" in (ROOT / "scratchpad.md").read_text()
    assert "./run.sh -m" in body


def test_changing_phase_changes_the_current_phase_and_its_web_access():
    p = parse_program(SHIPPED.replace("phase: hyperparameters", "phase: moonshot"))
    assert p.current.name == "moonshot" and p.current.web is True


@pytest.mark.parametrize("old,new,field,anchor", [
    ("direction: minimize", "direction: lower", "metric.direction", "direction: lower"),
    ("phase: hyperparameters", "phase: hyperparams", "phase", "phase: hyperparams"),
    ("deadline_hours: 10", "deadline_hours: 10\nmax_runs: 5", "max_runs", "max_runs: 5"),
    ("max_experiments: 25", "max_experiments: -3", "phases.1.max_experiments", "max_experiments: -3"),
    ("train_seconds: 300", "train_seconds: 0", "budget.train_seconds", "train_seconds: 0"),
    ("min_improvement: 0.003", "min_improvement: -1", "min_improvement", "min_improvement: -1"),
    ("web: true", "web: maybe", "phases.3.web", "web: maybe"),
    ("backend: auto", "backend: podman", "sandbox.backend", "backend: podman"),
    ("k_sigma: 2.0", "k_sigma: 2.0\n  sigma: 0.1", "noise.sigma", "sigma: 0.1"),
    ("editable: [train.py, scratchpad.md]", "editable: [../prepare.py]", "editable", "editable: [../"),
])
def test_schema_errors_name_the_field_and_the_line(old, new, field, anchor):
    assert old in SHIPPED
    text = SHIPPED.replace(old, new, 1)
    msg = error_for(text)
    assert f"line {line_of(text, anchor)}: {field}:" in msg, msg
    assert msg.startswith("program.md: ")


def test_an_unknown_phase_lists_the_phases_that_exist():
    msg = error_for(SHIPPED.replace("phase: hyperparameters", "phase: hyperparams"))
    assert "'hyperparams' is not one of the phases" in msg and "moonshot" in msg


def test_duplicate_phase_names_are_refused():
    text = SHIPPED.replace("- name: architecture", "- name: hyperparameters")
    assert "phases: duplicate phase names" in error_for(text)


def test_invalid_yaml_names_its_line():
    text = SHIPPED.replace("  name: val_bpb", "  name: [val_bpb")
    msg = error_for(text)
    m = re.search(r"line (\d+): invalid YAML", msg)
    assert m, msg
    assert abs(int(m.group(1)) - line_of(text, "name: [val_bpb")) <= 1   # the parser notices on that line or the next


def test_a_tab_in_the_front_matter_is_invalid_yaml_on_its_line():
    text = SHIPPED.replace("metric:\n", "metric:\n\t", 1)
    assert f"line {line_of(text, chr(9))}: invalid YAML" in error_for(text)


def test_missing_front_matter():
    assert "line 1: expected YAML front matter" in error_for("# just prose\n")
    assert "line 1: expected YAML front matter" in error_for("")


def test_unclosed_front_matter():
    assert "never closed" in error_for("---\nphase: default\n# no closing fence\n")


def test_front_matter_that_is_not_a_mapping():
    assert "must be a mapping" in error_for("---\n- a\n- b\n---\n")


def test_inline_mode_needs_a_command_and_a_regex():
    msg = error_for("---\nrun:\n  mode: inline\n  command: [python, train.py]\n---\n")
    assert "line 2: run: inline mode needs run.command and run.metric_regex" in msg


def test_several_errors_are_all_reported():
    text = SHIPPED.replace("direction: minimize", "direction: up").replace("pids: 512", "pids: 1")
    msg = error_for(text)
    assert "metric.direction" in msg and "sandbox.pids" in msg
    assert len(msg.splitlines()) == 2


def test_load_program_reports_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_program(tmp_path)


def test_load_program_reads_the_project(tmp_path):
    (tmp_path / "program.md").write_text(SHIPPED)
    assert load_program(tmp_path).phase == "hyperparameters"


def test_an_error_in_a_nested_block_is_blamed_on_its_key_line():
    text = "---\nobjective: x\neditable:\n  - train.py\n  - ../secret.py\n---\n"
    assert "line 3: editable:" in error_for(text)


def sandbox_of(block: str):
    return parse_program(f"---\nsandbox:\n{block}\n---\n").sandbox


@pytest.mark.parametrize("value, want", [
    ("all", "all"), ("none", "none"), ("2", 2), ("[0, 3]", [0, 3]), ("[3, 0]", [3, 0]),
    ("0,3", [0, 3]), ("'1, 2'", [1, 2]), ("['0', '3']", [0, 3]),
])
def test_gpu_selection_spellings(value, want):
    assert sandbox_of(f"  gpus: {value}").gpus == want


def test_gpus_default_to_all_with_a_gigabyte_of_shm():
    sb = parse_program("---\nobjective: x\n---\n").sandbox
    assert (sb.gpus, sb.shm_gb, sb.shm) == ("all", None, 1)


@pytest.mark.parametrize("value, words", [
    ("-1", ["-1 is not a GPU count", "write none"]),
    ("0", ["0 is not a GPU count", "write none"]),
    ("[0, 0]", ["GPU 0 is listed twice"]),
    ("[1, -2]", ["-2 is not a GPU index"]),
    ("'2'", ["is a string", "gpus: 2", "gpus: [2]"]),      # a count or device 2? said, not guessed
    ("[]", ["selects no GPU", "write none"]),
    ("true", ["is not a GPU selection", "all, none"]),
    ("All", ["is not a GPU selection"]),
    ("[GPU-8f3c]", ["not a GPU index"]),
    ("'0,x'", ["'x' is not a GPU index"]),
    ("2.5", ["is not a GPU selection"]),
])
def test_bad_gpu_selections_are_refused_on_their_line(value, words):
    msg = error_for(f"---\nobjective: x\nsandbox:\n  gpus: {value}\n---\n")
    assert "line 4: sandbox.gpus:" in msg, msg
    for w in words:
        assert w in msg, msg


def test_shm_must_be_positive_and_fit_in_memory():
    assert sandbox_of("  shm_gb: 4\n  memory_gb: 16").shm_gb == 4
    assert sandbox_of("  memory_gb: 0.5").shm == 0.25, "the default shrinks with a small memory limit"
    assert "sandbox.shm_gb" in error_for("---\nsandbox:\n  shm_gb: 0\n---\n")
    msg = error_for("---\nsandbox:\n  shm_gb: 16\n---\n")
    assert "does not fit in memory_gb (8)" in msg and "lower shm_gb or raise memory_gb" in msg


@pytest.mark.parametrize("value", ["torchrun --nproc-per-node 2", "[torchrun, --nproc-per-node, 2]",
                                   "'torchrun --nproc-per-node=2'", "[torchrun, '--nproc-per-node', '2']"])
def test_launcher_as_a_string_or_a_list(value):
    want = ["torchrun", "--nproc-per-node", "2"] if "=" not in value else ["torchrun", "--nproc-per-node=2"]
    assert parse_program(f"---\nrun:\n  launcher: {value}\n---\n").run.launcher == want


@pytest.mark.parametrize("value, bad", [
    ("'torchrun; rm -rf ~'", "'torchrun;'"), ("'torchrun $NPROC'", "'$NPROC'"), ("'a | b'", "'|'"),
    ("'a `id`'", "'`id`'"), ("[torchrun, 'a b']", "'a b'"), ("'a > out'", "'>'"),
])
def test_launcher_with_shell_syntax_is_refused(value, bad):
    msg = error_for(f"---\nrun:\n  launcher: {value}\n---\n")
    assert f"run.launcher: {bad}" in msg and "no shell syntax" in msg, msg


@pytest.mark.parametrize("value", ["''", "[]", "\"torchrun 'x\""])
def test_empty_or_unclosed_launcher_is_refused(value):
    assert "run.launcher" in error_for(f"---\nrun:\n  launcher: {value}\n---\n")


# --- editable: files, folders, globs -----------------------------------------------------------

def _with_editable(editable: str) -> str:
    return SHIPPED.replace("editable: [train.py, scratchpad.md]", f"editable: {editable}")


def _tree(root: Path, *files: str) -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")


@pytest.mark.parametrize("pattern, yes, no", [
    ("model.py", ["model.py"], ["model.pyc", "src/model.py"]),
    ("src/", ["src/a.py", "src/x/y/z.cfg"], ["src", "srcx/a.py"]),
    ("config/*.py", ["config/a.py"], ["config/sub/a.py", "a.py", "config/a.pyc"]),
    ("**/*.yaml", ["a.yaml", "conf/x/b.yaml"], ["a.yml", "conf/a.yaml.bak"]),
    ("conf/**/b.yaml", ["conf/b.yaml", "conf/x/y/b.yaml"], ["b.yaml"]),
    ("m[0-9].py", ["m1.py"], ["ma.py", "m/.py"]),
    ("m[!0-9].py", ["ma.py"], ["m1.py"]),
    ("layer?.py", ["layer1.py"], ["layer.py", "layer12.py"]),
])
def test_editable_patterns_match_files_folders_and_globs(pattern, yes, no):
    p = parse_program(_with_editable(f"[train.py, '{pattern}']"))
    assert all(p.editable_matches(f) for f in yes), yes
    assert not any(p.editable_matches(f) for f in no), no


def test_never_editable_files_are_never_matched_whatever_the_pattern(tmp_path):
    p = parse_program(_with_editable("['**/*.py', '**/*.md', '**/*.sh', '**/*.tsv', '**/*.json']"))
    _tree(tmp_path, "model.py", "prepare.py", "program.md", "run.sh", "results.tsv", "hooks/h.py",
          ".claude/settings.json", "runs/0001/train.py", ".git/x.py", "autoresearch/program.py",
          ".autoresearch/state.json", ".venv/lib/x.py", "scratchpad.md", "src/deep/a.py", "Program.MD")
    assert p.editable_files(tmp_path) == ["model.py", "scratchpad.md", "src/deep/a.py"]
    for f in ("prepare.py", "program.md", "PREPARE.PY", "run.sh", "hooks/h.py", "runs/0001/train.py"):
        assert not p.editable_matches(f), f


@pytest.mark.parametrize("pattern", ["../model.py", "/abs/model.py", "src/../../x.py", "~/x.py", "./model.py",
                                     "src//a.py", "", "a\\b.py"])
def test_an_editable_pattern_escaping_the_project_is_refused_at_load(pattern):
    err = error_for(_with_editable(f"[train.py, '{pattern}']"))
    assert "editable" in err and "relative to the project" in err
    assert f"line {line_of(SHIPPED, 'editable:')}" in err


@pytest.mark.parametrize("pattern", ["program.md", "prepare.py", "runs/", "hooks/*.py", ".claude/settings.json",
                                     "autoresearch/"])
def test_naming_a_harness_file_is_refused_at_load(pattern):
    err = error_for(_with_editable(f"[train.py, '{pattern}']"))
    assert "never editable" in err and repr(pattern) in err


def test_a_glob_or_folder_that_matches_nothing_is_an_error_naming_it(tmp_path):
    _tree(tmp_path, "train.py", "config/a.py")
    (tmp_path / "program.md").write_text(_with_editable("[train.py, 'config/*.py', 'conf/*.yaml', 'src/']"))
    with pytest.raises(ConfigError) as e:
        load_program(tmp_path)
    assert "'conf/*.yaml'" in str(e.value) and "'src/'" in str(e.value) and "'config/*.py'" not in str(e.value)
    # a phase's pattern is checked too, even before that phase is current
    text = SHIPPED.replace("editable: [train.py, scratchpad.md]", "editable: [train.py, 'config/*.py']")
    text = text.replace("name: moonshot", "name: moonshot\n    editable: ['models/*.py']", 1)
    (tmp_path / "program.md").write_text(text)
    with pytest.raises(ConfigError, match=r"'models/\*\.py'"):
        load_program(tmp_path)


def test_a_literal_file_may_be_missing_and_is_in_the_set(tmp_path):
    _tree(tmp_path, "train.py", "config/a.py", "config/b.py")
    (tmp_path / "program.md").write_text(_with_editable("[train.py, model_v2.py, 'config/*.py', scratchpad.md]"))
    p = load_program(tmp_path)
    assert p.editable_files(tmp_path) == ["config/a.py", "config/b.py", "model_v2.py", "scratchpad.md", "train.py"]


@pytest.mark.parametrize("outputs, words", [
    ('["../x"]', "project-relative folder"), ('["/abs"]', "project-relative folder"),
    ('[runs]', "not runs/"), ('[".git/hooks"]', "not runs/"), ('["a*"]', "no glob"),
    ('[train.py]', "would replace code (train.py)"), ('[scratchpad.md]', "would replace code (an editable file)"),
])
def test_run_outputs_name_a_results_folder_and_never_code(outputs, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_program(f"---\nrun: {{outputs: {outputs}}}\n---\n")
    assert parse_program("---\nrun: {outputs: [out, outputs/, wandb]}\n---\n").run.outputs == ["out", "outputs", "wandb"]


def test_eval_command_and_run_command_share_one_rule():
    """Issue 29: words run.command accepts (a Hydra `${oc.env:...}`, a quoted argument with a space,
    a YAML number) are accepted by eval.command too, as the same argv; both refuse a line break."""
    words = "python eval.py data.root=${oc.env:HELD} --name 'a b' --k 5"
    want = ["python", "eval.py", "data.root=${oc.env:HELD}", "--name", "a b", "--k", "5"]
    p = parse_program(f"---\nrun: {{mode: eval_command, command: \"{words.replace('eval.py', 'train.py')}\"}}\n"
                      f"eval: {{command: \"{words}\", files: [eval.py]}}\n---\n")
    assert p.eval.command == want and p.run.command == [w.replace("eval.py", "train.py") for w in want]
    listed = parse_program("---\nrun: {mode: eval_command, command: [python, train.py, --lr, 0.001]}\n"
                           "eval: {command: [python, eval.py, 'x=${oc.env:HELD}', --k, 5], files: [eval.py]}\n---\n")
    assert listed.eval.command[-3:] == ["x=${oc.env:HELD}", "--k", "5"] and listed.run.command[-1] == "0.001"
    for bad in ('[python, "eval.py\\nrm"]', "[python, '']"):
        for key in ("eval", "run"):
            text = ("---\nrun: {mode: eval_command, command: " + (bad if key == "run" else "[python, train.py]")
                    + "}\neval: {command: " + (bad if key == "eval" else "[python, eval.py]") + ", files: [eval.py]}\n---\n")
            with pytest.raises(ConfigError, match="line break|empty"):
                parse_program(text)


def test_source_roots_are_project_folders():
    assert parse_program("---\nrun: {source_roots: [src, lib/]}\n---\n").run.source_roots == ["src", "lib"]
    for bad in ("/abs", "../up", "src/*"):
        with pytest.raises(ConfigError, match="source_roots"):
            parse_program(f"---\nrun: {{source_roots: ['{bad}']}}\n---\n")


@pytest.mark.parametrize("metric", ["{name: val_bpb, direction: maximize}", "{name: val_acc, direction: minimize}",
                                    "{name: accuracy, direction: maximize}"])
def test_the_built_in_evaluation_declares_val_bpb_minimize_and_a_contradiction_is_refused(tmp_path, metric):
    """The built-in scorer measures bits per byte: a flipped direction would keep the worst model."""
    from autoresearch.program import BUILTIN_METRIC, ConfigError, load_program
    text = (Path(__file__).resolve().parent.parent / "program.md").read_text()
    text = re.sub(r"^metric:\n(?:  .*\n)+", f"metric: {metric}\n", text, count=1, flags=re.M)
    (tmp_path / "program.md").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_program(tmp_path)
    assert "measures val_bpb" in str(e.value) and "direction: minimize" in str(e.value) and "eval_command" in str(e.value)
    assert (BUILTIN_METRIC.name, BUILTIN_METRIC.direction) == ("val_bpb", "minimize")
    (tmp_path / "program.md").write_text(text.replace(f"metric: {metric}", "metric: {name: val_bpb, direction: minimize}"))
    assert load_program(tmp_path).metric.direction == "minimize"
