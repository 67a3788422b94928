"""`autoresearch status` and `autoresearch plot` over a real results.tsv written through the ledger's API."""
from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from autoresearch.loop import state
from autoresearch.program import load_program
from autoresearch.ledger import LedgerRow, append_rows
from autoresearch.cli.plot import draw
from autoresearch.ledger import running_best
from autoresearch.program import Metric
from autoresearch.cli.status import gather

ROOT = Path(__file__).resolve().parents[2]
BRANCH = "autoresearch/20260101-220000"

# (status, value, description): a believable night, minimised val_bpb
NIGHT = [
    ("keep", 2.300, "baseline"),
    ("discard", 2.310, "lr 3e-3"),
    ("keep", 2.250, "lr 1e-3 with warmup"),
    ("crash", None, "swiglu with a shape bug"),
    ("discard", 2.900, "batch 4 (diverged)"),
    ("keep", 2.210, "width 96"),
    ("discard", 2.215, "dropout 0.1"),
]


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def make_project(tmp: Path, night=NIGHT, branch: str = BRANCH, phase_of=lambda i: "hyperparameters") -> Path:
    root = tmp / "proj"
    root.mkdir()
    shutil.copy(ROOT / "program.md", root / "program.md")
    (root / "train.py").write_text("print('hi')\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "program.md", "train.py")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    _git(root, "checkout", "-qb", branch)
    rows, best = [], None
    for i, (status, value, desc) in enumerate(night, 1):
        prev = best
        if status == "keep":
            best = value
        rows.append(LedgerRow(
            commit=f"c{i:06d}", value=value, memory_gb=0.1, status=status, description=desc,
            experiment=i, run_id=f"{i:04d}", runs=[f"{i:04d}"],
            run_status="crash" if status == "crash" else "ok", phase=phase_of(i), branch=branch,
            seeds=[i], delta=None if value is None or prev is None else value - prev, prev_best=prev,
            best=best, threshold=0.003, sigma=0.004 if i > 1 else None, sandbox="bwrap",
            decided_at=datetime(2026, 1, 1, 22, i, tzinfo=timezone.utc)))
    append_rows(root, rows, "val_bpb")
    return root


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=root, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(root)})


def test_gather_counts_best_budget_and_sigma(tmp_path):
    root = make_project(tmp_path)
    rep = gather(root)
    assert rep.branch == BRANCH
    assert (len(rep.rows), rep.kept, rep.discarded, rep.crashed) == (7, 3, 3, 1)
    assert rep.best is not None and rep.best.value == pytest.approx(2.21) and rep.best.experiment == 6
    program = load_program(root)
    assert rep.phase == "hyperparameters" and rep.phase_max == program.current.max_experiments
    assert rep.budget_left == program.current.max_experiments - 7
    assert rep.sigma == pytest.approx(0.004)                    # from the ledger: no state.json here
    assert rep.threshold == pytest.approx(max(program.min_improvement, program.noise.k_sigma * 0.004))
    assert rep.paused is None


def test_gather_reads_the_pause_and_calibration_from_the_loop_state(tmp_path):
    root = make_project(tmp_path)
    state.record_calibration(root, state.Sample([2.30, 2.31, 2.32], ["0101", "0102", "0103"], [1, 2, 3], "x", 300))
    state.pause(root, "going to bed")
    rep = gather(root)
    assert rep.sigma == pytest.approx(0.01)
    assert rep.threshold == pytest.approx(0.02)                 # k_sigma 2 x 0.01 > min_improvement
    assert rep.paused == "going to bed"


def test_status_prints_the_table(tmp_path):
    root = make_project(tmp_path)
    p = cli(root, "status")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert BRANCH in out and "2.2100" in out and "experiment 6" in out
    assert "7: 3 kept, 3 discarded, 1 crashed" in out
    assert "lr 1e-3 with warmup" in out and "swiglu with a shape bug" in out
    assert "13 of 20 experiments left" in out
    assert "sigma 0.0040" in out


def test_status_shows_the_latest_run_branch_from_the_users_branch(tmp_path):
    root = make_project(tmp_path)
    _git(root, "checkout", "-q", "main")
    assert gather(root).branch == BRANCH


def _empty_project(tmp_path):
    """A project with program.md and a git repo, but no experiments yet."""
    root = tmp_path / "empty"
    root.mkdir()
    shutil.copy(ROOT / "program.md", root / "program.md")
    _git(root, "init", "-q")
    return root


def test_status_without_experiments_says_what_to_do(tmp_path):
    root = _empty_project(tmp_path)
    p = cli(root, "status")
    assert p.returncode == 0, p.stderr
    assert "No experiments yet" in p.stdout


def test_status_names_a_broken_program_line(tmp_path):
    root = make_project(tmp_path)
    text = (root / "program.md").read_text().replace("direction: minimize", "direction: down")
    (root / "program.md").write_text(text)
    p = cli(root, "status")
    assert p.returncode == 2
    assert "line 9: metric.direction" in p.stderr and "Traceback" not in p.stderr


def test_running_best_steps_only_at_improving_keeps():
    rows = [LedgerRow(commit="c", value=v, status=s, experiment=i, run_id=str(i), runs=[str(i)],
                      run_status="ok", phase="p", branch="b", decided_at=datetime.now(timezone.utc))
            for i, (s, v) in enumerate([("keep", 3.0), ("discard", 2.0), ("keep", 2.5), ("keep", 2.6)], 1)]
    assert [(r.experiment, r.value) for r in running_best(rows, Metric(direction="minimize"))] == [(1, 3.0), (3, 2.5)]
    assert [(r.experiment, r.value) for r in running_best(rows, Metric(direction="maximize"))] == [(1, 3.0)]


def test_plot_writes_a_png_with_every_experiment(tmp_path):
    root = make_project(tmp_path)
    p = cli(root, "plot")
    assert p.returncode == 0, p.stderr
    png = root / "progress.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "7 experiments" in p.stdout
    import numpy as np
    from matplotlib import image
    img = image.imread(png)
    assert img.shape[1] > 1000 and img.shape[0] > 500
    # the kept points are drawn in green: some pixels must be close to #2ecc71
    green = ((abs(img[..., 0] - 0x2e / 255) < 0.05) & (abs(img[..., 1] - 0xcc / 255) < 0.05)
             & (abs(img[..., 2] - 0x71 / 255) < 0.05))
    assert green.sum() > 50
    red = (img[..., 0] > 0.85) & (img[..., 1] < 0.4) & (img[..., 2] < 0.35)
    assert red.sum() > 10                                        # the crash is on the picture too
    chart = red[:, : int(img.shape[1] * 0.8)]                     # left of the legend (it has a red x too)
    rows_with_red = np.nonzero(chart.any(axis=1))[0]
    assert rows_with_red.min() > img.shape[0] * 0.75              # ... in the strip at the bottom, not the chart


def test_plot_handles_a_maximised_metric_and_a_single_row(tmp_path):
    rows = [LedgerRow(commit="c", value=0.61, status="keep", experiment=1, run_id="0001", runs=["0001"],
                      run_status="ok", phase="p", branch="b", description="baseline",
                      decided_at=datetime.now(timezone.utc))]
    out = draw(rows, tmp_path / "p.png", "val_acc", "maximize")
    assert out.stat().st_size > 10_000


def test_plot_without_rows_fails_clearly(tmp_path):
    root = _empty_project(tmp_path)
    p = cli(root, "plot")
    assert p.returncode == 1 and "nothing to plot" in p.stdout
    assert not (root / "progress.png").exists()


def test_status_shows_a_spent_phase_and_the_deadline(tmp_path):
    root = make_project(tmp_path)
    text = (root / "program.md").read_text().replace("max_experiments: 20", "max_experiments: 5", 1)
    (root / "program.md").write_text(text)
    st = state.read_state(root)
    st.started_at = datetime(2026, 1, 1, 22, 0, tzinfo=timezone.utc)
    state.write_state(root, st)
    rep = gather(root)
    assert rep.budget_left == 0 and rep.phase_max == 5
    assert rep.spent and "phase 'hyperparameters' has used its 5 experiments" in rep.spent
    assert rep.deadline == "2026-01-02 08:00 UTC"                 # deadline_hours 10 after the clock started
    p = cli(root, "status")
    assert "budget spent" in p.stdout and "2026-01-02 08:00 UTC" in p.stdout


# --- plot formats and layout, checked on the files themselves ----------------------------------

SVG_NS = "{http://www.w3.org/2000/svg}"


def _svg_groups(path: Path) -> dict:
    import xml.etree.ElementTree as ET
    tree = ET.parse(path)
    assert tree.getroot().tag == SVG_NS + "svg"
    return {g.get("id"): g for g in tree.getroot().iter(SVG_NS + "g") if g.get("id")}


def _points(group) -> list[tuple[float, float]]:
    """The (x, y) of every marker a scatter drew (SVG y grows downwards)."""
    return [(float(u.get("x")), float(u.get("y"))) for u in group.iter(SVG_NS + "use")]


def _box(group) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the first path in a group: an axes' or legend's frame."""
    import re
    d = next(group.iter(SVG_NS + "path")).get("d")
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
    xs, ys = nums[0::2], nums[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def test_plot_svg_is_real_svg_with_crashes_in_their_own_strip_and_a_legend_over_no_point(tmp_path):
    root = make_project(tmp_path, night=NIGHT + [("crash", None, "oom at width 4096")])
    p = cli(root, "plot", "-o", "night.svg")
    assert p.returncode == 0, p.stderr
    path = root / "night.svg"
    assert path.read_bytes().lstrip().startswith(b"<?xml") and b"\x89PNG" not in path.read_bytes()[:16]
    g = _svg_groups(path)
    results, strip = _box(g["results"]), _box(g["crash-strip"])
    crashes = _points(g["crashes"])
    assert len(crashes) == 2
    # every crash marker lies inside the strip, below the whole results chart
    for x, y in crashes:
        assert strip[1] <= y <= strip[3] and y > results[3]
    kept, disc = _points(g["kept"]), _points(g["discarded"])
    assert len(kept) == 3 and len(disc) == 2                     # the third discard is off the scale
    assert len(_points(g["discarded-off-scale-above"])) == 1
    for x, y in kept + disc:
        assert results[0] <= x <= results[2] and results[1] <= y <= results[3]
    leg = _box(g["legend"])
    for x, y in kept + disc + crashes + _points(g["discarded-off-scale-above"]):
        assert not (leg[0] <= x <= leg[2] and leg[1] <= y <= leg[3]), (x, y, leg)
    assert leg[0] > results[2]                                   # beside the chart, not on it
    text = path.read_text()
    assert "running best" in text and "crashed, no metric (2)" in text
    assert "lr 1e-3 with warmup" in text                         # kept labels as before


def test_plot_pdf_is_a_real_pdf(tmp_path):
    root = make_project(tmp_path)
    p = cli(root, "plot", "--out", "night.pdf")
    assert p.returncode == 0, p.stderr
    data = (root / "night.pdf").read_bytes()
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    assert b"/Type /Page" in data and b"/Type /Catalog" in data


def test_plot_is_byte_for_byte_repeatable_in_svg(tmp_path):
    root = make_project(tmp_path)
    assert cli(root, "plot", "-o", "a.svg").returncode == 0
    assert cli(root, "plot", "-o", "b.svg").returncode == 0
    assert (root / "a.svg").read_bytes() == (root / "b.svg").read_bytes()


def test_plot_refuses_an_unknown_extension_and_writes_nothing(tmp_path):
    root = make_project(tmp_path)
    p = cli(root, "plot", "-o", "night.jpg")
    assert p.returncode == 2 and ".png, .svg or .pdf" in p.stdout
    assert not (root / "night.jpg").exists()


# --- machine-readable output and the karpathy-style summary ------------------------------------

def test_status_json_is_the_report_model_with_summary_and_crash_reasons(tmp_path):
    from autoresearch.record.metrics import RunMetrics
    from autoresearch.cli.status import Report
    root = make_project(tmp_path)
    run = root / "runs" / "0004"
    run.mkdir(parents=True)
    RunMetrics(run_id="0004", status="crash", metric_name="val_bpb", direction="minimize", train_py_sha256="x",
               seed=4, budget_seconds=300, grace_seconds=60, sandbox="bwrap",
               reason="RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x96 and 64x256)",
               started_at=datetime(2026, 1, 1, 22, 4, tzinfo=timezone.utc)).write(run)
    p = cli(root, "status", "--json")
    assert p.returncode == 0, p.stderr
    rep = Report.model_validate_json(p.stdout)                  # the same model as the tables
    assert rep == gather(root)
    sm = rep.summary
    assert (sm.experiments, sm.kept) == (7, 3) and sm.keep_rate == pytest.approx(3 / 7)
    assert sm.baseline == pytest.approx(2.30) and sm.best == pytest.approx(2.21)
    assert sm.total_improvement == pytest.approx(0.09) and sm.relative_improvement == pytest.approx(0.09 / 2.30)
    assert [c.experiment for c in sm.top_kept] == [3, 6]           # 0.05 then 0.04 better than the best before
    assert sm.top_kept[0].improvement == pytest.approx(0.05) and sm.top_kept[0].description == "lr 1e-3 with warmup"
    [crash] = rep.crashes
    assert crash.experiment == 4 and "shapes cannot be multiplied" in crash.reason
    table = cli(root, "status").stdout
    assert "keep rate 43%" in table and "2.3000 -> 2.2100: 0.0900 better than the baseline, 3.9%" in table
    assert "top kept changes" in table and "+0.0500" in table
    assert "crashes" in table and "shapes cannot be multiplied" in table


def test_status_json_with_a_maximised_metric_counts_improvement_upwards(tmp_path):
    night = [("keep", 0.60, "baseline"), ("keep", 0.65, "wider"), ("discard", 0.64, "deeper"),
             ("keep", 0.70, "mixup")]
    root = make_project(tmp_path, night=night)
    # a maximised metric is declared by the project's own evaluation (inline here): the built-in one is val_bpb
    text = (root / "program.md").read_text().replace("direction: minimize", "direction: maximize")
    text = text.replace("floor: 0.5", "floor: 1.5").replace("\nbudget:", "\nrun: {mode: inline, command: [python, "
                                                              "train.py], metric_regex: 'val_acc (.*)'}\nbudget:", 1)
    (root / "program.md").write_text(text)
    from autoresearch.cli.status import Report
    rep = Report.model_validate_json(cli(root, "status", "--json").stdout)
    assert rep.summary.total_improvement == pytest.approx(0.10)
    assert [c.improvement for c in rep.summary.top_kept] == pytest.approx([0.05, 0.05])
    assert rep.crashes == []


def test_status_json_without_experiments(tmp_path):
    from autoresearch.cli.status import Report
    rep = Report.model_validate_json(cli(_empty_project(tmp_path), "status", "--json").stdout)
    assert rep.rows == [] and rep.summary is None and rep.best is None


def test_status_with_only_the_baseline_kept_claims_no_improvement(tmp_path):
    root = make_project(tmp_path, night=[("keep", 2.300, "baseline"), ("discard", 2.310, "lr 3e-3")])
    table = cli(root, "status").stdout
    assert "none yet: only the baseline is kept" in table and "better than the baseline" not in table
