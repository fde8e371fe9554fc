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
Reads the summary rows of report.summarize only (no torch); matplotlib draws off-screen.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core import store as files
from ..core.schema import SCHEMES, Config
from ..core.sweep import signal_prune

FAMILIES = ("pretext", "retrain", "probe", "svm", "finetune")
TITLES = {"pretext": "IMP's own task on the test split (pretext)",
          "retrain": "masks re-trained on labels",
          "probe": "linear probes on frozen features",
          "svm": "linear SVMs on frozen features",
          "finetune": "fine-tuning with the mask kept"}
SCHEME_NAMES = {"winning_ticket": "winning ticket", "random_reinit": "random re-init", "random": "random",
                "random_adjusted": "random (adjusted)"}
# Fixed colours per start, so a start looks the same in every figure.
SCHEME_COLORS = {"winning_ticket": "#1f77b4", "random_reinit": "#ff7f0e", "random": "#7f7f7f",
                 "random_adjusted": "#9467bd"}
# The re-training starts whose level 0 is the dense network trained from scratch, in order of
# preference for the dense line (winning ticket last: its level 0 starts from rewound weights).
DENSE_STARTS = ("random_reinit", "random", "random_adjusted", "winning_ticket")
# The starts that keep a mask, each a panel of the by-start figure in the paper's order (Fig. 3a, 3b),
# and the random starts drawn in every one of them as the baseline.
MASK_STARTS = ("random_reinit", "winning_ticket")
BASELINES = ("random", "random_adjusted")
# Fixed colours per task, so a signal looks the same in every by-start panel and figure (the paper's
# figures are not available as text here: these are matplotlib's tab colours, one hue per task, none
# of them a baseline's: grey random, purple adjusted random).
TASK_COLORS = {"labels": "#1f77b4", "rotnet": "#d62728", "exemplar": "#2ca02c", "npid": "#e377c2",
               "s4l": "#8c564b"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
TASK_NAMES = {"labels": "labels", "rotnet": "RotNet", "exemplar": "Exemplar", "npid": "NPID", "s4l": "S4L"}
METRIC_NAMES = {"top1": "top-1 accuracy", "mAP": "mAP", "knn_top1": "kNN top-1 accuracy",
                "pair_top1": "pair retrieval top-1"}



def evaluation_label(evaluation: str) -> str:
    """A line's legend: `pretext task`, `on <data set>`, or for the random-features reference
    (`probe:<data set>@init`) `random features, on <data set>`."""
    if evaluation == "pretext":
        return "pretext task"
    data = evaluation.split(":", 1)[1]
    if data.endswith("@init"):
        return f"random features, on {data[:-len('@init')]}"
    return f"on {data}"

def family(evaluation: str) -> str:
    if evaluation == "pretext":
        return "pretext"
    if evaluation in SCHEMES:
        return "retrain"
    return evaluation.split(":", 1)[0]


@dataclass
class Line:
    label: str
    color: str
    points: list  # summary rows, densest first
    axis: "Axis" = None  # what x is; None: weights remaining (%)

    @property
    def x(self) -> list[float]:
        axis = self.axis or REMAINING
        return [axis.scale * p[axis.key] for p in self.points]

    @property
    def mean(self) -> list[float]:
        return [100 * p["mean"] for p in self.points]

    @property
    def stderr(self) -> list[float]:
        return [100 * (p["stderr"] or 0.0) for p in self.points]

    @property
    def dense(self) -> Optional[float]:
        """Mean at level 0, in %, or None when level 0 is not in the summary."""
        return next((100 * p["mean"] for p in self.points if p["level"] == 0), None)


@dataclass(frozen=True)
class Axis:
    """What a figure's x axis shows: a summary column, scaled (to % or to a unit of MACs)."""
    key: str
    scale: float
    name: str  # file names: accuracy_vs_<name>
    label: str = ""
    ticked: bool = True  # ticks at the points' own values (levels); False: the log axis's own


REMAINING = Axis("remaining", 100.0, "remaining")


def macs_axis(summary: list[dict]) -> Axis:
    """Multiply-accumulates of one forward pass (sslprune.compute.cost), in the unit of the densest network.
    Ticked by the log scale: lines of one level differ in MACs (each mask keeps other layers)."""
    top = max((s["macs_dense"] or 0 for s in summary if s.get("macs_dense") is not None), default=0)
    unit, scale = next(((u, f) for u, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)) if top >= f), ("", 1.0))
    return Axis("macs", 1 / scale, "macs", f"MACs of one forward pass ({unit or 'count'}, log scale)", ticked=False)


@dataclass
class Panel:
    family: str
    signal: str
    title: str
    ylabel: str
    xlabel: str
    lines: list = field(default_factory=list)
    reference: Optional[str] = None  # the line whose level 0 is the dense result; None: each line's own
    dense_y: Optional[float] = None  # the dense result (%) when no line of the panel holds it (by start)
    baselines: tuple = ()  # labels of lines that are references: they never stretch the y axis

    @property
    def ticks(self) -> list[float]:
        return sorted({x for line in self.lines for x in line.x}, reverse=True)

    def dense(self) -> list[tuple[float, str]]:
        """(y, colour) of the dashed dense line(s)."""
        if self.dense_y is not None:
            return [(self.dense_y, "black")]
        lines = [ln for ln in self.lines if ln.label == self.reference] if self.reference else self.lines
        return [(ln.dense, "black" if self.reference else ln.color) for ln in lines if ln.dense is not None]


def fit_y(panel: Panel, pad: float = 0.05, least: float = 2.0) -> tuple[float, float]:
    """The panel's y limits: its curves' means ± one s.e. and the dense line, padded by `pad` of the
    span (at least `least` points in all). A baseline curve (random masks) does not stretch the axis:
    where it collapses to chance at the sparsest levels, a 0-100 axis squeezed the 1-5 point
    differences between signals into a few pixels (issue 22); its points below the axis are marked
    at the bottom edge with their value (`draw`)."""
    ys = [y for ln in panel.lines if ln.label not in panel.baselines
          for m, e in zip(ln.mean, ln.stderr) for y in (m - e, m + e)]
    ys += [y for y, _ in panel.dense()]
    if not ys:  # only baselines: they are the data
        ys = [y for ln in panel.lines for m, e in zip(ln.mean, ln.stderr) for y in (m - e, m + e)]
    lo, hi = min(ys), max(ys)
    margin = max(pad * (hi - lo), (least - (hi - lo)) / 2, 0.0)
    return lo - margin, hi + margin


def describe_signal(cfg: Config, name: str) -> str:
    """What a signal is, in words: task, label subset, pruned layers, rewind point, source network."""
    s = cfg.signals[name]
    t = s.task
    parts = [TASK_NAMES.get(t.name, t.name)]
    if t.label_fraction < 1:
        what = "of the images of each class" if t.label_subset == "images" else "of the classes"
        parts.append(f"{100 * t.label_fraction:g}% {what}")
    p = signal_prune(cfg, name)
    if p.scope != "all":
        parts.append(f"layers up to {p.scope}")
    if s.rewind is not None or cfg.prune.rewinds:
        parts.append(f"rewind {p.rewind}")
    if s.init_from is not None:
        parts.append(f"from {s.init_from}'s dense network")
    if s.data is not None:
        parts.append(f"on {s.data.name}")
    return ", ".join(parts)


def metric_name(task: str, metric: str, fam: str) -> str:
    if fam == "pretext" and metric == "top1":
        return "rotation accuracy" if task == "rotnet" else "label accuracy (top-1)"
    return METRIC_NAMES.get(metric, metric)


def panels(cfg: Config, summary: list[dict], fam: str, axis: Axis = REMAINING) -> list[Panel]:
    """The panels of one family, in the order of cfg.signals; x is `axis` (rows without its value are left out)."""
    mine = [s for s in summary if family(s["evaluation"]) == fam and s.get(axis.key) is not None]
    by_signal: dict = defaultdict(lambda: defaultdict(list))
    for s in mine:
        by_signal[s["signal"]][s["evaluation"]].append(s)
    scoped = any(signal_prune(cfg, n).scope != "all" for n in cfg.signals)
    xlabel = axis.label or ("weights of the pruned layers remaining (%)" if scoped else "weights remaining (%)")
    out = []
    for name in cfg.signals:
        if name not in by_signal:
            continue
        evaluations = by_signal[name]
        task = cfg.signals[name].task.name
        if fam == "retrain":
            order = [e for e in SCHEMES if e in evaluations]
            labels = {e: SCHEME_NAMES[e] for e in order}
            colors = {e: SCHEME_COLORS[e] for e in order}
        else:
            order = sorted(evaluations)
            labels = {e: evaluation_label(e) for e in order}
            colors = {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(order)}
        lines = [Line(labels[e], colors[e], sorted(evaluations[e], key=lambda p: -p[axis.key]), axis)
                 for e in order]
        metrics = sorted({metric_name(task, p["metric"], fam) for e in order for p in evaluations[e]})
        where = f" on {cfg.retrain.data.name}" if fam == "retrain" else ""
        what = describe_signal(cfg, name)
        title = name if what.lower() == name.lower() else f"{name}\n{what}"
        # Re-training: one dense line, a start that trains the full (level 0) mask from fresh
        # weights (all random starts do: the network trained from scratch on labels).
        ref = next((e for e in DENSE_STARTS if e in evaluations), None) if fam == "retrain" else None
        out.append(Panel(fam, name, title, f"{', '.join(metrics)}{where} (%)", xlabel, lines,
                         reference=SCHEME_NAMES[ref] if ref else None))
    return out


def pooled(groups: list[list[dict]]) -> list[dict]:
    """One curve from several signals' summary rows of one start, level by level: the mean of their
    means and the standard error of that mean (sqrt of the summed squared s.e. over their number).
    A network reported under several names (a shared stage: identical rows) counts once."""
    at: dict = defaultdict(dict)
    for rows in groups:
        for p in rows:
            at[p["level"]][(p["mean"], p["stderr"], p["count"])] = p
    out = []
    for level in sorted(at):
        ps = list(at[level].values())
        k = len(ps)
        se = None if any(p["stderr"] is None for p in ps) else math.sqrt(sum(p["stderr"] ** 2 for p in ps)) / k
        out.append({**ps[0], "mean": sum(p["mean"] for p in ps) / k, "stderr": se,
                    "count": sum(p["count"] for p in ps), "remaining": sum(p["remaining"] for p in ps) / k})
    return out


def signal_colors(cfg: Config, names: list[str]) -> dict[str, str]:
    """Each signal its task's colour; a second signal of one task (a label subset: labels_10pct
    beside labels) the first colour of PALETTE no signal has yet."""
    out: dict[str, str] = {}
    for n in names:
        color = TASK_COLORS.get(cfg.signals[n].task.name)
        if color is None or color in out.values():
            taken = {*out.values(), *TASK_COLORS.values(), *SCHEME_COLORS.values()}  # baselines' too
            color = next((c for c in PALETTE if c not in taken), PALETTE[len(out) % len(PALETTE)])
        out[n] = color
    return out


def _swept(name: str) -> str:
    return name.partition("@")[2]


def by_start(cfg: Config, summary: list[dict], axis: Axis = REMAINING) -> list[list[Panel]]:
    """The paper's Figure-3 layout of the re-training results: rows of panels, one panel per start
    that keeps a mask (MASK_STARTS), each signal a curve in its task's colour and each random start
    a baseline curve pooled over the signals; one row per swept value (`base@value`) with sweeps.
    The dashed dense line: the pooled level 0 of the first random start (DENSE_STARTS), the dense
    network trained from scratch. [] when no start keeps a mask."""
    mine = [s for s in summary if family(s["evaluation"]) == "retrain" and s.get(axis.key) is not None]
    got: dict = defaultdict(lambda: defaultdict(list))
    for s in mine:
        got[s["evaluation"]][s["signal"]].append(s)
    starts = [e for e in MASK_STARTS if e in got]
    if not starts:
        return []
    scoped = any(signal_prune(cfg, n).scope != "all" for n in cfg.signals)
    xlabel = axis.label or ("weights of the pruned layers remaining (%)" if scoped else "weights remaining (%)")
    metrics = sorted({METRIC_NAMES.get(s["metric"], s["metric"]) for s in mine})
    ylabel = f"{', '.join(metrics)} on {cfg.retrain.data.name} (%)"
    values = []
    for n in cfg.signals:
        values += [_swept(n)] if _swept(n) not in values else []
    rows = []
    for value in values:
        names = [n for n in cfg.signals if _swept(n) == value]
        bases = [e for e in BASELINES if any(n in got[e] for n in names)]
        ref = next((e for e in DENSE_STARTS if any(n in got[e] for n in names)), None)
        dense = None
        if ref is not None:
            zero = pooled([[p for p in got[ref][n] if p["level"] == 0] for n in names if n in got[ref]])
            dense = 100 * zero[0]["mean"] if zero else None
        colors = signal_colors(cfg, names)
        row = []
        for start in starts:
            lines = [Line(n, colors[n], sorted(got[start][n], key=lambda p: -p[axis.key]), axis)
                     for n in names if n in got[start]]
            if not lines:
                continue
            for b in bases:
                points = pooled([got[b][n] for n in names if n in got[b]])
                lines.append(Line(SCHEME_NAMES[b], SCHEME_COLORS[b], sorted(points, key=lambda p: -p[axis.key]),
                                  axis))
            letter = "ab"[MASK_STARTS.index(start)]
            title = f"({letter}) {SCHEME_NAMES[start]}" + (f"\n{value}" if value else "")
            row.append(Panel("retrain", f"{start}@{value}" if value else start, title, ylabel, xlabel, lines,
                             reference=SCHEME_NAMES[ref] if dense is not None else None, dense_y=dense,
                             baselines=tuple(SCHEME_NAMES[b] for b in bases)))
        if row:
            rows.append(row)
    return rows


def grid(panels_: list[Panel], wrap: int = 4) -> list[list[Optional[Panel]]]:
    """Rows of panels: with sweeps (names `base@value`) one row per base, one column per value;
    otherwise rows of at most `wrap` panels."""
    if any("@" in p.signal for p in panels_):
        bases, values = [], []
        for p in panels_:
            base, _, value = p.signal.partition("@")
            bases += [base] if base not in bases else []
            values += [value] if value not in values else []
        at = {tuple(p.signal.partition("@")[::2]): p for p in panels_}
        return [[at.get((b, v)) for v in values] for b in bases]
    return [panels_[i:i + wrap] for i in range(0, len(panels_), wrap)]


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
