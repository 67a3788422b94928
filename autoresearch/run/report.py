"""What the agent reads after a run (printed by ./run.sh): the status and reason, the metric
against the current best at the same fingerprint, or the tail of train.log when there is no
metric; memory, wall time, seed and sandbox."""
from __future__ import annotations

from pathlib import Path

from ..program import Program
from ..record import LOG_FILE, RunMetrics, inside, program_code
from ..registry import from_log
from .logs import log_tail
from .outcome import INLINE_WARNING


def current_best(root: Path, program: Program, m: RunMetrics | None = None) -> tuple[float | None, str | None]:
    """(the best comparable with run `m` -- same fingerprint, measured on the branch tip's code --, why unknown)."""
    from ..gitops import GitError, head_commit
    from ..record import snapshot_at
    from ..ledger import current_best as best
    try:
        fp = m.fingerprint.key if m is not None and m.fingerprint else None
        head = head_commit(root) if fp else None
        snap = snapshot_at(root, head, program_code(program, root)) if head else None
        value = best(root, program.metric, fingerprint=fp, snapshot=snap)
        if value is None and fp and best(root, program.metric) is not None:
            return None, "no best at this fingerprint yet (budget, backend or data changed): a new baseline"
        return value, None
    except (ValueError, GitError, OSError) as e:   # a corrupt ledger must not hide the run's own result
        return None, f"best unknown ({type(e).__name__}: {str(e)[:120]})"


def summary(m: RunMetrics, program: Program, best: float | None, best_note: str | None, run_dir: Path,
            root: Path) -> list[str]:
    rel = run_dir.relative_to(root) if inside(run_dir, root) else run_dir
    lines = [f"run {m.run_id}: {m.status}" + (f" -- {m.reason}" if m.reason and m.status != "ok" else "")]
    if m.status == "ok" and m.metric_value is not None:
        line = f"{m.metric_name}: {m.metric_value:.6f}"
        if best is not None:
            delta = m.metric_value - best
            verdict = ("better" if program.metric.better(m.metric_value, best)
                       else "same" if delta == 0 else "worse")
            line += f" | best {best:.6f} | delta {delta:+.6f} ({verdict})"
        else:
            line += f" | {best_note or 'no best yet (this would be the baseline)'}"
        lines.append(line)
        if from_log(m.mode):
            lines.append(f"note: {INLINE_WARNING}")
    else:
        tail = log_tail(run_dir / LOG_FILE)
        if tail:
            lines.append(f"--- last {len(tail)} lines of {rel / LOG_FILE} ---")
            lines += tail
            lines.append("---")
    mem = f"{m.peak_memory_gb:.2f} GB" if m.peak_memory_gb is not None else "unknown"
    parts = [f"peak memory {mem}", f"wall {m.total_seconds or 0:.1f} s (train {m.train_seconds or 0:.1f} s"
             + (f", eval {m.eval_seconds:.1f} s)" if m.eval_seconds is not None else ")"),
             f"seed {m.seed}", f"sandbox {m.sandbox}"]
    lines.append(" | ".join(parts))
    if m.sandbox_warning:
        lines.append("WARNING: " + m.sandbox_warning)
    lines.append(f"full log: {rel / LOG_FILE}")
    return lines
