"""Paper-style figures of an experiment: one multi-panel figure per evaluation family.

Families (`family()`): `pretext` (each IMP chain's own task), `retrain` (re-training the masks on
labels from the starts winning ticket, random re-init, random, adjusted random), `probe`, `svm`
and `finetune` (the transfer evaluations). In a family's figure:
- one panel per signal; with sweeps (`rotnet@stage2`, `labels@0it`) the panels form a grid, one
  row per base signal and one column per swept value, so layerwise pruning reads per scope; label
  subsets are signals of their own, so semi-supervised pruning reads per subset;
- lines: the re-training starts (retrain) or the evaluated data sets (probe, svm, finetune);
  mean over seeds with a band of ± one standard error;
- a dashed line at the dense (level 0) result: for re-training, random re-init at level 0 (the
  unpruned network trained from scratch on labels; random when the experiment has no random
  re-init), each line's own level 0 otherwise;
- x: weights remaining on a reversed log axis, ticked at the levels' remaining fractions
  (`accuracy_vs_macs*.png`: the same panels against the MACs of one forward pass);
- y: the panel's own metric and unit: a pretext panel says what its task measures (rotation
  accuracy is not label accuracy), so pretext results never share an axis with label accuracy;
- the legend outside the panels, right of each row.

Re-training is drawn a second way, as the paper's Figure 3 lays it out (`by_start`):
`accuracy_vs_remaining_retrain.png` has one panel per start that keeps a mask (a: random re-init,
b: winning ticket), every signal a curve in its task's colour (TASK_COLORS) and the random
baseline(s) a grey curve, so claims that compare signals read within one panel; with sweeps, one
row of such panels per swept value. The per-signal panels above are kept as
`accuracy_vs_remaining_retrain_signals.png`. Every panel's y axis is fitted to its data (`fit_y`).

`accuracy_vs_remaining.png` is the overview: every family's panels, one family below the other.
Reads the summary rows of report.summarize only (no torch); the panels are laid out as data in
layout.py, with the names and colours of palette.py; matplotlib draws them here, off-screen.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from ..core import store as files
from ..core.schema import Config
from .layout import REMAINING, Axis, Panel, by_start, fit_y, grid, macs_axis, panels
from .palette import FAMILIES, TITLES


def draw(rows: list[list[Optional[Panel]]], title: str, sharey_rows: bool = False, row_titles: bool = False):
    """The figure of a grid of panels (returned open: the caller saves and closes it);
    `row_titles`: each panel's title starts with its family (the overview's rows differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    ncols = max(len(r) for r in rows)
    # At least as wide as the title (about 0.09 inch per character at 11 pt): a one-panel figure cut it.
    width = max(3.4 * ncols + 1.8, 0.09 * max(len(line) for line in title.splitlines()))
    fig, axes = plt.subplots(len(rows), ncols, figsize=(width, 3.3 * len(rows) + 0.6),
                             squeeze=False, layout="constrained")
    fig.suptitle(title, fontsize=11)
    legends: list = []
    for r, row in enumerate(rows):
        used = [c for c, p in enumerate(row) if p is not None]
        for c in range(ncols):
            ax = axes[r][c]
            p = row[c] if c < len(row) else None
            if p is None:
                ax.axis("off")  # an empty cell: it may hold the row's legend
                continue
            for line in p.lines:
                ax.plot(line.x, line.mean, marker="o", ms=3, lw=1.4, color=line.color, label=line.label)
                if any(line.stderr):
                    lo = [m - s for m, s in zip(line.mean, line.stderr)]
                    hi = [m + s for m, s in zip(line.mean, line.stderr)]
                    ax.fill_between(line.x, lo, hi, color=line.color, alpha=0.2, lw=0)
            for y, color in p.dense():
                ax.axhline(y, color=color, ls="--", lw=1.0)
            ax.set_ylim(*fit_y(p))
            ax.set_xscale("log")
            ticks = p.ticks
            if all(line.axis is None or line.axis.ticked for line in p.lines):
                ax.xaxis.set_major_locator(FixedLocator(ticks))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks], rotation=90, fontsize=7)
            else:  # every 1-9 x 10^k, labelled plainly; within a decade all of them, else 1, 2 and 5
                wide = max(ticks) / min(ticks) > 10
                plain = FuncFormatter(lambda v, _: f"{v:.3g}" if not wide or
                                      round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in (1, 2, 5) else "")
                ax.xaxis.set_major_locator(LogLocator(subs=tuple(range(1, 10))))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_major_formatter(plain)
                ax.tick_params(axis="x", labelsize=7, labelrotation=90)
            ax.set_xlim(max(ticks) * 1.08, min(ticks) / 1.08)  # reversed: dense left, sparsest right
            ax.tick_params(axis="y", labelsize=8)
            ax.set_xlabel(p.xlabel, fontsize=8)
            ax.set_ylabel(p.ylabel, fontsize=8)
            ax.set_title(f"{TITLES[p.family]}\n{p.title}" if row_titles else p.title, fontsize=8)
            ax.grid(True, alpha=0.3)
        if sharey_rows and used:
            lo = min(axes[r][c].get_ylim()[0] for c in used)
            hi = max(axes[r][c].get_ylim()[1] for c in used)
            for c in used:
                axes[r][c].set_ylim(lo, hi)
        for c in used:  # a baseline under the (final) axis: a mark on the bottom edge, with its value
            ax, p, lo = axes[r][c], row[c], axes[r][c].get_ylim()[0]
            for line in (ln for ln in p.lines if ln.label in p.baselines):
                below = [(x, m) for x, m in zip(line.x, line.mean) if m < lo]
                if below:
                    ax.plot([x for x, _ in below], [lo] * len(below), ls="none", marker="v", ms=5,
                            color=line.color, clip_on=False, label=f"_{line.label} below the axis")
                    for x, m in below:
                        ax.annotate(f"{m:.0f}", (x, lo), xytext=(0, 4), textcoords="offset points",
                                    ha="center", fontsize=6, color=line.color)
        # One legend per row, right of its last panel, in the empty cell there if the row is short
        # (outside every panel's data either way); repeated rows of the same lines share the first.
        handles: dict = {}
        for p in (q for q in row if q is not None):
            for line in p.lines:
                handles.setdefault(line.label, Line2D([], [], color=line.color, marker="o", ms=3, lw=1.4))
        refs = sorted({p.reference for p in row if p is not None and p.reference})
        if refs:
            handles[f"dense: {' / '.join(refs)}, level 0"] = Line2D([], [], color="black", ls="--", lw=1.0)
        else:
            handles["dense (level 0)"] = Line2D([], [], color="0.4", ls="--", lw=1.0)
        if any(any(line.stderr) for p in row if p is not None for line in p.lines):
            handles["± 1 s.e. over seeds"] = Patch(color="0.5", alpha=0.3)
        if used and list(handles) not in legends:
            legends.append(list(handles))
            last = used[-1]
            host, anchor = (axes[r][last + 1], (0.0, 1.0)) if last + 1 < ncols else (axes[r][last], (1.03, 1.0))
            host.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=anchor,
                        borderaxespad=0.0, fontsize=8, frameon=False)
    return fig


def _seeds(summary: list[dict]) -> str:
    n = max((s["count"] for s in summary), default=1)
    return f"mean ± s.e. over {n} seeds" if n > 1 else "one seed (no error band)"


def save(fig, path: Path, dpi: int) -> None:
    """A PNG written atomically: a full disk is one line (StoreError) and leaves the previous
    figure whole, never a truncated PNG and a traceback."""
    files.replace(Path(path), lambda f: fig.savefig(f, dpi=dpi, format="png"), durable=False)


def write(cfg: Config, summary: list[dict], out: Path) -> dict[str, Path]:
    """accuracy_vs_remaining_<family>.png per family with results, and the overview
    accuracy_vs_remaining.png; the same against MACs (accuracy_vs_macs_<family>.png,
    accuracy_vs_macs.png) for the rows whose stages stored their cost; returns
    {family or 'overview' (or 'macs:' + either): path}."""
    out = Path(out)
    written = _write_axis(cfg, summary, out, REMAINING, "")
    written.update(_write_axis(cfg, summary, out, macs_axis(summary), "macs:"))
    # A figure of an earlier report (a family with no results now, or an older layout) would read
    # as current: the folder holds what this report drew and nothing else of its kind.
    for old in [*out.glob("accuracy_vs_remaining*.png"), *out.glob("accuracy_vs_macs*.png")]:
        if old not in written.values():
            old.unlink()
    return written


def _write_axis(cfg: Config, summary: list[dict], out: Path, axis: Axis, prefix: str) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    by_family = {f: panels(cfg, summary, f, axis) for f in FAMILIES}
    by_family = {f: p for f, p in by_family.items() if p}
    starts = by_start(cfg, summary, axis)
    for fam, ps in by_family.items():
        fig = draw(grid(ps), f"{cfg.experiment}: {TITLES[fam]}\n{_seeds(summary)}", sharey_rows=fam != "pretext")
        key = fam + ("_signals" if fam == "retrain" and starts else "")
        path = out / f"accuracy_vs_{axis.name}_{key}.png"
        save(fig, path, 110)
        plt.close(fig)
        written[prefix + key] = path
    if starts:  # the paper's layout under the family's own name: it is the re-training figure
        fig = draw(starts, f"{cfg.experiment}: {TITLES['retrain']}, by start\n{_seeds(summary)}", sharey_rows=True)
        path = out / f"accuracy_vs_{axis.name}_retrain.png"
        save(fig, path, 110)
        plt.close(fig)
        written[prefix + "retrain"] = path
    if by_family:
        # Each family's grid, stacked: one row of panels per family, or the family's rows when it
        # has more signals than fit (sweeps: one row per base signal), never one 8-panel row.
        rows = [row for ps in by_family.values() for row in grid(ps)]
        fig = draw(rows, f"{cfg.experiment}: every evaluation family\n{_seeds(summary)}", row_titles=True)
        path = out / f"accuracy_vs_{axis.name}.png"
        save(fig, path, 100)
        plt.close(fig)
        written[prefix + "overview"] = path
    return written
