"""`autoresearch plot`: the night's progress picture, in the spirit of karpathy/autoresearch's
analysis notebook. PNG, SVG or PDF, chosen by the file's extension.

Every experiment is a point (x: experiment number, y: the metric): discarded ones faint, kept
ones green and labelled with their description, and the running best as a step line. Crashes have
no metric, so they are drawn in a separate strip under the chart (same x axis): a crash can never
be read as a result, whichever way the metric points. The y range is the interesting band between
the baseline and the best; points far outside it are arrows on the edge. The legend sits outside
the axes, so it hides no point.

Each drawn group carries an SVG id (`kept`, `discarded`, `crashes`, `results`, `crash-strip`,
`legend`, ...), so tests (and anyone scripting over the SVG) can find them.
"""
from __future__ import annotations

from pathlib import Path

from ..program import Metric, load_program
from ..ledger import LedgerRow, read_rows, running_best
from .status import shown_branch

LABEL_CHARS = 48
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
NO_DATE = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


class PlotError(ValueError):
    """Bad input a human can fix (e.g. an unknown file extension)."""


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


def image_format(out: Path) -> str:
    """png, svg or pdf, from the extension; anything else is an error, not a mislabelled file."""
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise PlotError(f"cannot write {out.name!r}: use a .png, .svg or .pdf file name")
    return fmt


def figure(rows: list[LedgerRow], metric: str, direction: str, title: str | None = None):
    """The matplotlib Figure (not saved). Two axes sharing x: results above, crashes below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frontier = running_best(rows, Metric(direction=direction))  # type: ignore[arg-type]
    bx, by = [r.experiment for r in frontier], [r.value for r in frontier]
    best = by[-1] if by else None
    crash = [r for r in rows if r.status == "crash" or r.value is None]
    fig = plt.figure(figsize=(15, 7.5))
    grid = fig.add_gridspec(2, 1, height_ratios=[12, 1], hspace=0.06)
    ax = fig.add_subplot(grid[0])
    strip = fig.add_subplot(grid[1], sharex=ax)
    ax.set_gid("results")
    strip.set_gid("crash-strip")
    rng = y_range(rows, best)
    if rng:
        ax.set_ylim(*rng)
    kept = _draw_results(ax, rows, bx, by, rng)
    _draw_crashes(strip, crash)
    plt.setp(ax.get_xticklabels(), visible=False)
    _frame(fig, ax, strip, rows, metric, direction, title, best, kept, crash)
    return fig


def _draw_results(ax, rows: list[LedgerRow], bx: list[int], by: list, rng) -> list[LedgerRow]:
    """Discarded points (off-scale ones as arrows on the edge), kept ones labelled, the running best;
    returns the kept rows."""
    lo, hi = rng if rng else (None, None)

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
    inside = [r for r in disc if not outside(r.value)]
    ax.scatter([r.experiment for r in inside], [r.value for r in inside], s=18, c="#b0b0b0",
               alpha=0.7, zorder=2, label=f"discarded ({len(disc)})", gid="discarded")
    far = [r for r in disc if outside(r.value)]
    if far:
        up = [r for r in far if r.value > hi]
        down = [r for r in far if r.value < lo]
        ax.scatter([r.experiment for r in up], [clip(r.value) for r in up], marker="^", s=22,
                   c="#b0b0b0", zorder=2, label=f"discarded, off the scale ({len(far)})",
                   gid="discarded-off-scale-above")
        ax.scatter([r.experiment for r in down], [clip(r.value) for r in down], marker="v", s=22,
                   c="#b0b0b0", zorder=2, gid="discarded-off-scale-below")
    ax.scatter([r.experiment for r in kept], [clip(r.value) for r in kept], s=60, c="#2ecc71",
               edgecolors="black", linewidths=0.6, zorder=4, label=f"kept ({len(kept)})", gid="kept")
    if bx:
        last_x = max(r.experiment for r in rows)
        ax.step(bx + [last_x], by + [by[-1]], where="post", color="#27ae60", linewidth=2,
                alpha=0.75, zorder=3, label="running best", gid="running-best")
    for r in kept:
        text = " ".join(r.description.split()) or f"run {r.run_id}"
        if len(text) > LABEL_CHARS:
            text = text[: LABEL_CHARS - 3] + "..."
        ax.annotate(text, (r.experiment, clip(r.value)), textcoords="offset points", xytext=(6, 6),
                    fontsize=8, color="#1a7a3a", rotation=25, ha="left", va="bottom", zorder=5)
    return kept


def _draw_crashes(strip, crash: list[LedgerRow]) -> None:
    """The crash strip: no y scale at all, so nothing in it can be read as a metric value."""
    strip.scatter([r.experiment for r in crash], [0.0] * len(crash), marker="x", s=40, c="#e74c3c",
                  zorder=3, label=f"crashed, no metric ({len(crash)})", gid="crashes")
    strip.set_ylim(-1, 1)
    strip.set_yticks([])
    strip.set_ylabel("crashed", rotation=0, ha="right", va="center", fontsize=9, color="#c0392b")
    strip.set_facecolor("#fdf2f1")
    strip.grid(True, axis="x", alpha=0.25)


def _frame(fig, ax, strip, rows: list[LedgerRow], metric: str, direction: str, title: str | None,
           best: float | None, kept: list[LedgerRow], crash: list[LedgerRow]) -> None:
    """Axis labels, the title with the counts, the limits, and the legend outside the axes."""
    n = len(rows)
    strip.set_xlabel("experiment #")
    ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    head = title or "autoresearch progress"
    best_txt = f", best {best:.4f}" if best is not None else ""
    ax.set_title(f"{head}: {n} experiments, {len(kept)} kept, {len(crash)} crashed{best_txt}")
    if rows:
        ax.set_xlim(0.5, max(r.experiment for r in rows) + 0.5 + max(1, n * 0.08))
    ax.grid(True, alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = strip.get_legend_handles_labels()
    # Outside the axes, right of the chart: it covers no point, whatever the data looks like.
    leg = fig.legend(handles + h2, labels + l2, loc="upper left", bbox_to_anchor=(0.835, 0.88),
                     fontsize=9, frameon=True)
    leg.set_gid("legend")
    fig.subplots_adjust(left=0.07, right=0.825, top=0.93, bottom=0.08)


def draw(rows: list[LedgerRow], out: Path, metric: str, direction: str, title: str | None = None) -> Path:
    """Write the picture in the format named by `out`'s extension, atomically."""
    fmt = image_format(out)
    import matplotlib
    import matplotlib.pyplot as plt
    fig = figure(rows, metric, direction, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with matplotlib.rc_context({"svg.hashsalt": "autoresearch"}):       # same data, same bytes
            fig.savefig(tmp, format=fmt, dpi=130, metadata=NO_DATE.get(fmt))
    finally:
        plt.close(fig)
    tmp.replace(out)                          # a half-written picture never replaces a good one
    return out


def main(root: Path, out: Path | None = None, branch: str | None = None) -> int:
    from rich.console import Console
    console = Console()
    if out is not None:
        try:
            image_format(out)
        except PlotError as e:
            console.print(f"autoresearch plot: {e}", style="red")
            return 2
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
