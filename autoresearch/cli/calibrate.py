"""`autoresearch calibrate`: measure the seed noise of the current train.py.

Runs it N times (program.md `noise.calibrate_runs`) with different seeds -- the runner gives
each re-run of the same train.py a fresh seed -- and stores sigma, the sample standard
deviation of the metric, in the loop state, for the runs' fingerprint (budget, eval, backend,
device, data): a calibration at 5 s says nothing about 300 s runs, so it is recorded with its budget
and applies only to runs with that fingerprint. The runs' metrics.json say purpose: calibration,
so a lost state.json loses neither sigma nor their status as measurements. The Stop hook's keep threshold is then
max(min_improvement, k_sigma * sigma). The runs are marked as measurements, so the Stop hook
never decides them as experiments.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..program import load_program
from ..loop.runscan import run_ids
from ..digest import sha256_file
from ..loop.state import REPO_SEED, Sample, add_measurement_run, record_calibration, record_seed_ignored
from ..record import program_code
from ..run import fixed_seeds, reads_harness_seed, seed_override


def seed_ignored_text(metric: str, value: float, seeds: list[int], where: list[str], reads: bool) -> str:
    """The calibrate report (and status's line) when every seed gave the same bits."""
    at = ("; the seed is fixed at " + "; ".join(where)) if where else \
        ("; the code reads AUTORESEARCH_SEED but something else fixes the randomness" if reads else
         "; no constant seed was found in the tracked code (it may come from a library default or the data order)")
    return (f"the repo ignores the seed: {len(seeds)} runs with seeds {', '.join(map(str, seeds))} gave the "
            f"bit-identical {metric} {value!r}{at}. Noise is UNKNOWN, not zero: sigma is not stored, so the keep "
            f"threshold stays min_improvement, and a change that only moves the random sequence can look like a "
            f"win. Fix: seed from the harness, e.g. torch.manual_seed(int(os.environ.get('AUTORESEARCH_SEED', "
            f"1337))), then run `autoresearch calibrate` again")


def main(root: Path, runs: int | None = None, budget: float | None = None, backend: str | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..loop.decide import threshold
    from ..run import RunOptions, run_experiment
    from ..record import HarnessError
    from ..gitops import head_commit, show_blob

    console = Console()
    program = load_program(root)
    n = runs or program.noise.calibrate_runs
    if n < 2:
        print("autoresearch calibrate: needs at least 2 runs to measure a spread", file=sys.stderr)
        return 2
    script = program.run.train_script
    sha = sha256_file(root / script)
    head = head_commit(root)
    if head and show_blob(root, head, script) != (root / script).read_bytes():
        console.print(f"[yellow]note:[/] {script} differs from HEAD; calibrating the working copy")
    before = set(run_ids(root))
    values, ids, seeds, failed, shown = [], [], [], [], []
    fps: set[str] = set()
    budget_s: float | None = None
    try:
        for i in range(n):
            console.print(f"[bold]calibrate[/] run {i + 1}/{n} of {script} ({sha[:12] if sha else '?'})")
            try:
                m = run_experiment(root, f"calibrate {i + 1}/{n}", RunOptions(budget=budget, backend=backend,
                                   purpose="calibration"), echo=sys.stdout)
            except HarnessError as e:
                print(f"autoresearch calibrate: {e}", file=sys.stderr)
                return 2
            add_measurement_run(root, m.run_id)
            fps.add(m.fingerprint.key if m.fingerprint else "")
            budget_s = m.budget_seconds
            ids.append(m.run_id)
            seeds.append(m.seed)
            if m.status == "ok" and m.metric_value is not None:
                values.append(m.metric_value)
                shown.append((m.run_id, m.seed, f"{m.metric_value:.6f}"))
            else:
                failed.append(f"{m.run_id} {m.status}")
                shown.append((m.run_id, m.seed, m.status))
    finally:
        for rid in set(run_ids(root)) - before:    # interrupted: still a measurement, never an experiment
            add_measurement_run(root, rid)
    if len(values) < 2:
        print(f"autoresearch calibrate: only {len(values)} of {n} runs succeeded ({', '.join(failed)}); "
              f"sigma not stored. Fix the crash (see runs/<id>/train.log) and calibrate again.", file=sys.stderr)
        return 1
    if len(fps) > 1:
        print("autoresearch calibrate: the runs did not share one fingerprint (budget, backend, device or data "
              "changed during calibration); sigma not stored. Calibrate again.", file=sys.stderr)
        return 1
    fp = next(iter(fps)) or None
    if len(set(values)) == 1:
        return _seed_ignored(root, program, values, ids, seeds, fp, console, budget, backend)
    cal = record_calibration(root, Sample(values, ids, seeds, sha or "", budget_s, fp))
    table = Table(title=f"noise of {program.metric.name} over seeds")
    for col in ("run", "seed", program.metric.name):
        table.add_column(col)
    for rid, seed, shown_value in shown:
        table.add_row(rid, str(seed), shown_value)
    console.print(table)
    mean = sum(values) / len(values)
    console.print(f"measured at a {budget_s:g} s budget (fingerprint {fp}); sigma applies only to runs "
                  f"with that fingerprint")
    console.print(f"mean {mean:.6f}  sigma {cal.sigma:.6f}  ->  keep threshold "
                  f"max(min_improvement {program.min_improvement:g}, {program.noise.k_sigma:g} x sigma) = "
                  f"[bold]{threshold(program, cal.sigma):.6f}[/]")
    return 0


def _seed_ignored(root: Path, program, values: list[float], ids: list[str], seeds: list[int], fp: str | None,
                  console, budget: float | None = None, backend: str | None = None) -> int:
    """Bit-identical results over different seeds: say where the repo fixes its seed and store no
    sigma for the harness's seed; then, when the command line can reach the repo's own seed
    (seeds.seed_override), measure the noise with it instead (_repo_seed)."""
    code = program_code(program, root)
    where = fixed_seeds(root, code, program.run.command)
    record_seed_ignored(root, values[0], ids, seeds, where, fp)
    from rich.markup import escape
    console.print("[bold red]not calibrated by AUTORESEARCH_SEED:[/] " + escape(seed_ignored_text(
        program.metric.name, values[0], seeds, where, reads_harness_seed(root, code))), highlight=False)
    override = seed_override(root, program.run.command, where)
    if override is None:
        return 1
    return _repo_seed(root, program, override, len(values), fp, console, budget, backend)


def _repo_seed(root: Path, program, override: list[str], n: int, fp: str | None, console,
               budget: float | None, backend: str | None) -> int:
    """The alternative estimate: run the same code n times with the repo's OWN seed changed on its
    command line (`seed=N`, `--seed N`). Decisions use this sigma when the harness's seed is
    ignored: every loop run then uses the repo's fixed seed, so a change that only moves the random
    sequence shifts the metric by about one draw of exactly this spread."""
    import sys

    from ..loop.decide import threshold
    from ..record import HarnessError
    from ..run import RunOptions, run_experiment, with_seed
    shown = " ".join(override)
    console.print(f"[bold]calibrate[/] again with the repo's own seed: `{shown}`")
    values, ids, seeds, fps = [], [], [], set()
    sha = sha256_file(root / program.run.train_script) or ""
    budget_s = None
    before = set(run_ids(root))
    try:
        for i in range(n):
            seed = i + 1
            argv = with_seed(override, seed)
            prog = program.model_copy(update={"run": program.run.model_copy(update={"command": argv})})
            try:
                m = run_experiment(root, f"{REPO_SEED} {i + 1}/{n}: {' '.join(argv)}", RunOptions(
                                   budget=budget, seed=seed, backend=backend, purpose="calibration", program=prog),
                                   echo=sys.stdout)
            except HarnessError as e:
                print(f"autoresearch calibrate: {e}", file=sys.stderr)
                return 2
            add_measurement_run(root, m.run_id)
            ids.append(m.run_id)
            budget_s = m.budget_seconds
            fps.add(m.fingerprint.key if m.fingerprint else "")
            if m.status == "ok" and m.metric_value is not None:
                values.append(m.metric_value)
                seeds.append(seed)
    finally:
        for rid in set(run_ids(root)) - before:    # interrupted: still a measurement, never an experiment
            add_measurement_run(root, rid)
    if fps != {fp or ""}:
        console.print("[bold red]not calibrated:[/] the runs with the repo's own seed had another fingerprint "
                      "(budget, backend, device or data changed); calibrate again")
        return 1
    if len(values) < 2 or len(set(values)) == 1:
        console.print(f"[bold red]not calibrated:[/] the repo's own seed gave {len(set(values))} distinct value(s) "
                      f"over {len(values)} successful run(s) of {n}; noise stays unknown")
        return 1
    cal = record_calibration(root, Sample(values, ids, seeds, sha, budget_s, fp), method="repo-seed",
                             command=override)
    console.print(f"calibrated with the repo's own seed ({', '.join(f'{v:.6f}' for v in values)}): sigma "
                  f"{cal.sigma:.6f} -> keep threshold [bold]{threshold(program, cal.sigma):.6f}[/]; loop runs still "
                  f"use the repo's fixed seed, and a change must beat this spread to be kept")
    return 0
