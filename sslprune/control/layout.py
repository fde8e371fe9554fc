"""The panels of an experiment's figures, as data: which summary rows form which curve of which
panel, with what title, axis labels, dense line and y limits (figures.py draws them; the layouts
are described there). Reads the summary rows of report.summarize only (no torch, no matplotlib)."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from ..core.schema import SCHEMES, Config
from ..core.sweep import signal_prune
from .palette import METRIC_NAMES, PALETTE, SCHEME_COLORS, SCHEME_NAMES, TASK_COLORS, TASK_NAMES

# The re-training starts whose level 0 is the dense network trained from scratch, in order of
# preference for the dense line (winning ticket last: its level 0 starts from rewound weights).
DENSE_STARTS = ("random_reinit", "random", "random_adjusted", "winning_ticket")
# The starts that keep a mask, each a panel of the by-start figure in the paper's order (Fig. 3a, 3b),
# and the random starts drawn in every one of them as the baseline.
MASK_STARTS = ("random_reinit", "winning_ticket")
BASELINES = ("random", "random_adjusted")


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
