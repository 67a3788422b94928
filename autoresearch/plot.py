"""`autoresearch plot`: progress.png, in the spirit of karpathy/autoresearch's analysis notebook.

Every experiment is a point (x: experiment number, y: the metric): discarded ones faint,
kept ones green and labelled with their description, crashes as red crosses on the lower
edge (they have no metric), and the running best as a step line. The y range is the
interesting band between the baseline and the best; points far outside it are drawn as
arrows on the edge instead of squashing the picture.
"""
from __future__ import annotations

from pathlib import Path

from .config import load_program
from .ledger import LedgerRow, read_rows
from .status import shown_branch

LABEL_CHARS = 48


def running_best(rows: list[LedgerRow], better) -> tuple[list[int], list[float]]:
    """(experiment numbers, best so far) at each keep: the frontier, as a step function."""
    xs, ys, best = [], [], None
    for r in rows:
        if r.status == "keep" and r.value is not None and (best is None or better(r.value, best)):
            best = r.value
            xs.append(r.experiment)
            ys.append(best)
    return xs, ys


def y_range(rows: list[LedgerRow], best: float | None) -> tuple[float, float] | None:
    """From just beyond the best to just beyond the baseline (the first valued row), or None."""
    vals = [r.value for r in rows if r.value is not None]
    if not vals:
        return None
    base = next(r.value for r in rows if r.value is not None)
    lo, hi = min(base, best if best is not None else base), max(base, best if best is not None else base)
    if hi - lo < 1e-12:
        spread = max(vals) - min(vals)
        pad = spread * 0.15 if spread > 0 else max(abs(base) * 0.01, 1e-3)
        return min(vals) - pad, max(vals) + pad
    pad = (hi - lo) * 0.25
    return lo - pad, hi + pad


def draw(rows: list[LedgerRow], out: Path, metric: str, direction: str, title: str | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    better = (lambda a, b: a < b) if direction == "minimize" else (lambda a, b: a > b)
    bx, by = running_best(rows, better)
    best = by[-1] if by else None
    fig, ax = plt.subplots(figsize=(14, 7))
    rng = y_range(rows, best)
    if rng:
        lo, hi = rng
        ax.set_ylim(lo, hi)

    def clip(v: float) -> float:
        """Off-scale values sit just inside the edge, so their markers are drawn whole."""
        if not rng:
            return v
        inset = (hi - lo) * 0.015
        return min(max(v, lo + inset), hi - inset)

    def outside(v: float) -> bool:
        return bool(rng) and not (lo <= v <= hi)

    disc = [r for r in rows if r.status == "discard" and r.value is not None]
    kept = [r for r in rows if r.status == "keep" and r.value is not None]
    crash = [r for r in rows if r.status == "crash" or r.value is None]
    inside = [r for r in disc if not outside(r.value)]
    ax.scatter([r.experiment for r in inside], [r.value for r in inside], s=18, c="#b0b0b0",
               alpha=0.7, zorder=2, label=f"discarded ({len(disc)})")
    far = [r for r in disc if outside(r.value)]
    if far:
        up = [r for r in far if r.value > hi]
        down = [r for r in far if r.value < lo]
        ax.scatter([r.experiment for r in up], [clip(r.value) for r in up], marker="^", s=22,
                   c="#b0b0b0", zorder=2, label="discarded, off the scale")
        ax.scatter([r.experiment for r in down], [clip(r.value) for r in down], marker="v", s=22,
                   c="#b0b0b0", zorder=2)
    ax.scatter([r.experiment for r in kept], [clip(r.value) for r in kept], s=60, c="#2ecc71",
               edgecolors="black", linewidths=0.6, zorder=4, label=f"kept ({len(kept)})")
    if crash:
        y_crash = (lo + (hi - lo) * 0.02) if rng else 0.0     # the bottom edge: no metric to show
        ax.scatter([r.experiment for r in crash], [y_crash] * len(crash), marker="x", s=36,
                   c="#e74c3c", zorder=3, label=f"crashed, no metric ({len(crash)})")
    if bx:
        last_x = max(r.experiment for r in rows)
        ax.step(bx + [last_x], by + [by[-1]], where="post", color="#27ae60", linewidth=2,
                alpha=0.75, zorder=3, label="running best")
    for r in kept:
        text = " ".join(r.description.split()) or f"run {r.run_id}"
        if len(text) > LABEL_CHARS:
            text = text[: LABEL_CHARS - 3] + "..."
        ax.annotate(text, (r.experiment, clip(r.value)), textcoords="offset points", xytext=(6, 6),
                    fontsize=8, color="#1a7a3a", rotation=25, ha="left", va="bottom", zorder=5)
    n = len(rows)
    ax.set_xlabel("experiment #")
    ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    head = title or "autoresearch progress"
    best_txt = f", best {best:.4f}" if best is not None else ""
    ax.set_title(f"{head}: {n} experiments, {len(kept)} kept{best_txt}")
    if rows:
        ax.set_xlim(0.5, max(r.experiment for r in rows) + 0.5 + max(1, n * 0.08))
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper right" if direction == "minimize" else "lower right", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(out)                          # a half-written picture never replaces a good one
    return out


def main(root: Path, out: Path | None = None, branch: str | None = None) -> int:
    from rich.console import Console
    console = Console()
    program = load_program(root)
    all_rows = read_rows(root)
    shown = shown_branch(root, all_rows, branch)
    rows = [r for r in all_rows if r.branch == shown] if shown else []
    if not rows:
        console.print("No experiments in results.tsv yet: nothing to plot.")
        return 1
    path = draw(rows, out or root / "progress.png", program.metric.name, program.metric.direction,
                title=shown)
    console.print(f"wrote {path} ({len(rows)} experiments on {shown})")
    return 0
