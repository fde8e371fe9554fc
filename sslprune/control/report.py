"""Results of an experiment, gathered from the store: tidy rows, a summary over seeds, tables, figures.

The store is the source of truth; the report can be rebuilt from it at any time. Under
<store>/reports/<experiment>/:
- `results.csv` (one row per measurement, the network's cost last: COST), `summary.csv` /
  `summary.md` (mean, s.e., count per signal, evaluation and level, and the mean cost), `table.md`
  (the pivot printed at the end of a run: per family, one row per level, one column per signal
  and evaluation), `stages.csv` (index.py);
- the figures of figures.py: `accuracy_vs_remaining_<family>.png` (re-training by start, as the
  paper's Figure 3, and per signal in `accuracy_vs_remaining_retrain_signals.png`) and the overview
  `accuracy_vs_remaining.png`, and the same against MACs (`accuracy_vs_macs*.png`);
- `rewind.md`: each signal's rewind point in every unit (updates, epochs, samples, % of training);
- `layerwise.md/png` when signals prune only part of the network (prune.scope / scopes);
- `semi_supervised.md/png` when a signal uses a label subset or S4L;
- `natural_sparsity.csv` and `weight_magnitudes.png` from each chain's trained dense network;
- `findings.md` (findings.py) and, when asked for (sslprune-report --reproduction), `reproduction.md`
  (reproduction.py: date, commit, threads, CPU model, the command and the findings' summary).
"""
from __future__ import annotations

import errno
from collections import defaultdict
from pathlib import Path
from typing import Optional

from ..core import store as files
from ..core.errors import StoreError
from ..core.rewind import rewind_steps
from ..core.schema import SCHEMES, Config
from ..core.sweep import signal_prune
from .experiment import measurements, stages
from .layout import family, metric_name
from .palette import FAMILIES, SCHEME_NAMES, TITLES
from .spread import mean_stderr

# What the evaluated network costs (sslprune.compute.cost, stored in result.json by the stage): every
# parameter and those its mask keeps, the prunable weights and those kept, and the multiply-accumulates
# of one forward pass at the data set's input size, dense and masked. Appended after the original
# columns, so a reader that indexes them by position still finds them; empty for stages that ran
# before the counts were stored.
COST = ["params", "params_kept", "prunable", "prunable_kept", "macs_dense", "macs"]
COLUMNS = ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining", "seed",
           "accuracy", *COST]
# Per group, the mean over seeds (IMP masks and random masks differ by seed, and so do their MACs).
SUMMARY_COST = ["params_kept", "macs_dense", "macs"]
SUMMARY = ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining", "mean", "stderr",
           "count", *SUMMARY_COST]


def finished(cfg: Config) -> dict:
    """Every stage's result (None: not done), keyed by its directory, each result.json read once."""
    return {s.key(): s.finished() for s in stages(cfg)}


def rows(cfg: Config, known: Optional[dict] = None) -> list[dict]:
    """One row per finished measurement of the experiment; unfinished stages are skipped. `known`:
    `finished(cfg)`, when the caller has it already."""
    out = []
    results = known if known is not None else finished(cfg)
    scopes = {name: signal_prune(cfg, name).scope for name in cfg.signals}
    for stage in measurements(cfg):  # a shared stage once per name it is reported under
        r = results[stage.key()]
        if r is None:
            continue
        out.append({"experiment": cfg.experiment, "signal": stage.signal,
                    "task": cfg.signals[stage.signal].task.name, "scope": scopes[stage.signal],
                    "evaluation": stage.evaluation, "metric": r.get("metric", "top1"), "level": stage.level,
                    "remaining": r["remaining"], "seed": stage.seed, "accuracy": r["accuracy"],
                    **{k: r.get(k) for k in COST}})
    return out


GROUP = ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining"]


def mean_count(values: list) -> Optional[float]:
    """The mean of counts over seeds: an int when they agree, None when any stage lacks the count."""
    if not values or any(v is None for v in values):
        return None
    return values[0] if len(set(values)) == 1 else sum(values) / len(values)


def summarize(results: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in results:
        groups[tuple(r[k] for k in GROUP)].append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][4], kv[0][6])):
        mean, stderr = mean_stderr([r["accuracy"] for r in rs])
        out.append({**dict(zip(GROUP, key)), "mean": mean, "stderr": stderr, "count": len(rs),
                    **{k: mean_count([r.get(k) for r in rs]) for k in SUMMARY_COST}})
    return out


def equivalence(rewind: str, steps_per_epoch: int, batch_size: int, total: int) -> dict:
    """One rewind point in every unit: updates k, epochs, samples seen and % of training."""
    k = rewind_steps(rewind, steps_per_epoch, batch_size, total)
    return {"rewind": rewind, "updates": k, "epochs": k / steps_per_epoch, "samples": k * batch_size,
            "percent": 100 * k / total, "batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
            "training_updates": total}


def rewinds(cfg: Config, known: Optional[dict] = None) -> list[dict]:
    """Each signal's late-resetting point in every unit, from the stored length of its training.

    E.g. ImageNet at batch 1536: 3ep = 2502 updates = 3,843,072 samples = 3.3% of 90 epochs."""
    out = []
    for stage in stages(cfg):
        if stage.kind != "imp" or stage.level != 0:
            continue
        result = known.get(stage.key()) if known is not None else stage.finished()
        if result is None:
            continue
        optim = cfg.signals[stage.signal].optim
        total = int(result["steps"])
        row = {"signal": stage.signal, "seed": stage.seed,
               **equivalence(signal_prune(cfg, stage.signal).rewind, total // optim.epochs, optim.batch_size, total)}
        if not any(r["signal"] == row["signal"] and r["updates"] == row["updates"] for r in out):
            out.append(row)  # seeds share the schedule: one row per signal
    return out


def rewind_markdown(rows_: list[dict]) -> str:
    lines = ["| signal | rewind | updates | epochs | samples | % of training | batch |", "|---|---|---|---|---|---|---|"]
    for r in rows_:
        lines.append(f"| {r['signal']} | {r['rewind']} | {r['updates']} | {r['epochs']:.2f} | {r['samples']:,} | "
                     f"{r['percent']:.2f}% | {r['batch_size']} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, columns: list[str], data: list[dict]) -> None:
    files.write_csv(path, columns, [{k: ("" if row[k] is None else row[k]) for k in columns} for row in data])


def quantity(n: Optional[float]) -> str:
    """A count in K, M or G with three significant digits ('' when unknown)."""
    if n is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g}"


def markdown(summary: list[dict]) -> str:
    lines = ["| signal | evaluation | level | remaining | result (mean ± s.e.) | metric | seeds | MACs | "
             "MACs of dense | parameters kept |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        se = "" if s["stderr"] is None else f" ± {100 * s['stderr']:.2f}"
        macs, dense = s.get("macs"), s.get("macs_dense")
        share = f"{100 * macs / dense:.2f}%" if macs is not None and dense else ""
        lines.append(f"| {s['signal']} | {s['evaluation']} | {s['level']} | {100 * s['remaining']:.2f}% | "
                     f"{100 * s['mean']:.2f}{se} | {s['metric']} | {s['count']} | {quantity(macs)} | {share} | "
                     f"{quantity(s.get('params_kept'))} |")
    return "\n".join(lines) + "\n"


def _column(s: dict) -> str:
    """A pivot column's name: the signal and what was measured."""
    fam, ev = family(s["evaluation"]), s["evaluation"]
    if fam == "retrain":
        return f"{s['signal']}: {SCHEME_NAMES[ev]}"
    if fam == "pretext":
        return f"{s['signal']}: {metric_name(s['task'], s['metric'], fam)}"
    what = ev.split(":", 1)[1]
    return f"{s['signal']}: {what}" + ("" if s["metric"] == "top1" else f" ({metric_name(s['task'], s['metric'], fam)})")


def pivot(summary: list[dict]) -> str:
    """The end-of-run table: per evaluation family, one row per level (weights remaining) and one
    column per signal and evaluation, each cell the mean ± s.e. over seeds in %."""
    blocks = []
    for fam in FAMILIES:
        part = [s for s in summary if family(s["evaluation"]) == fam]
        if not part:
            continue
        order = SCHEMES if fam == "retrain" else ()
        keys = sorted({(s["signal"], s["evaluation"]) for s in part},
                      key=lambda k: (k[0], order.index(k[1]) if k[1] in order else len(order), k[1]))
        at = {(s["signal"], s["evaluation"], s["level"]): s for s in part}
        names = {k: _column(next(s for s in part if (s["signal"], s["evaluation"]) == k)) for k in keys}
        seeds = max(s["count"] for s in part)
        lines = [f"## {TITLES[fam]} (%, {'mean ± s.e. over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'})",
                 "", "| level | remaining | " + " | ".join(names[k] for k in keys) + " |",
                 "|---|---|" + "---|" * len(keys)]
        for level in sorted({s["level"] for s in part}):
            rem = sorted(100 * s["remaining"] for s in part if s["level"] == level)
            # Scoped chains count only their pruned layers: one level can leave different fractions.
            remaining = f"{rem[0]:.2f}%" if f"{rem[0]:.2f}" == f"{rem[-1]:.2f}" else f"{rem[0]:.2f}-{rem[-1]:.2f}%"
            cells = []
            for signal, ev in keys:
                s = at.get((signal, ev, level))
                cells.append("" if s is None else f"{100 * s['mean']:.2f}"
                             + ("" if s["stderr"] is None else f" ± {100 * s['stderr']:.2f}"))
            lines.append(f"| {level} | {remaining} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _family_markdown(summary: list[dict], title: str, columns: list[str], rate: float) -> str:
    levels = sorted({s["level"] for s in summary})
    keys = sorted({tuple(s[c] for c in columns) for s in summary})
    at = {(tuple(s[c] for c in columns), s["level"]): s for s in summary}
    head = " | ".join(columns) + " | " + " | ".join(f"L{lv}: {100 * rate ** lv:.3g}%" for lv in levels)
    lines = [f"# {title}", "", "Mean ± s.e. over seeds at each level L (about (1 - prune.rate)^L of the pruned "
             "layers' weights remaining; results.csv has the exact fractions).", "",
             f"| {head} |", "|" + "---|" * (len(columns) + len(levels))]
    for key in keys:
        cells = []
        for lv in levels:
            s = at.get((key, lv))
            cells.append("" if s is None else f"{100 * s['mean']:.2f}" +
                         ("" if s["stderr"] is None else f" ± {100 * s['stderr']:.2f}"))
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(cfg: Config, plots: bool = True, reproduction: Optional[list[str]] = None) -> tuple[Path, list[dict]]:
    """Write every report file of the experiment (see the module docstring); return the folder.

    `plots=False` (sslprune-report --tables) writes the tables alone: the figures cost about the same
    at any store size, the tables grow with it. `reproduction`: the run's command-line overrides,
    to write reproduction.md with the command that reproduces the results (None: not written). A
    full disk is one line (StoreError, exit 1): the report is made from the store's results,
    which it never changes."""
    try:
        return _write(cfg, plots, reproduction)
    except OSError as e:
        if e.errno != errno.ENOSPC or isinstance(e, StoreError):
            raise
        raise files.disk_full(Path(e.filename or Path(cfg.store) / "reports" / cfg.experiment), e) from None


def _write(cfg: Config, plots: bool, reproduction: Optional[list[str]] = None) -> tuple[Path, list[dict]]:
    from . import figures, findings, index, naturals

    out = Path(cfg.store) / "reports" / cfg.experiment
    files.confine(cfg.store, out)  # a linked reports folder would take the tables elsewhere
    out.mkdir(parents=True, exist_ok=True)
    known = finished(cfg)  # every result.json read once, for the tables, the index and the findings
    results = rows(cfg, known)
    summary = summarize(results)
    _write_csv(out / "results.csv", COLUMNS, results)
    _write_csv(out / "summary.csv", SUMMARY, summary)
    # Every report file goes through files.write_text / write_csv / copy: a link planted at a
    # file's name is replaced, its target outside the store left alone.
    files.write_text(out / "summary.md", f"# {cfg.experiment}\n\n" + markdown(summary))
    files.write_text(out / "table.md", f"# {cfg.experiment}\n\n" + pivot(summary))
    index.write_stages(cfg, out, known)
    drawn = figures.write(cfg, summary, out) if plots else {}
    keep = 1 - cfg.prune.rate
    rw = rewinds(cfg, known)
    if rw:
        _write_csv(out / "rewind.csv", list(rw[0]), rw)
        files.write_text(out / "rewind.md", f"# {cfg.experiment}: rewind points\n\n" + rewind_markdown(rw))
    # The layerwise and semi-supervised figures of the paper are re-training figures: the same
    # picture as accuracy_vs_remaining_retrain.png (panels per scope / per label subset), under
    # the name that goes with their tables.
    headline = drawn.get("retrain") or next((drawn[f] for f in ("probe", "svm", "finetune") if f in drawn), None)
    if any(signal_prune(cfg, n).scope != "all" for n in cfg.signals):
        part = [s for s in summary if s["evaluation"] != "pretext"]
        files.write_text(out / "layerwise.md", _family_markdown(part, f"{cfg.experiment}: layerwise pruning",
                                                                ["scope", "task", "evaluation"], keep))
        if headline:
            files.copy(headline, out / "layerwise.png")
    semi = {n for n, sig in cfg.signals.items() if sig.task.name == "s4l" or sig.task.label_fraction < 1}
    if semi:
        part = [s for s in summary if s["evaluation"] != "pretext"]
        files.write_text(out / "semi_supervised.md", _family_markdown(
            part, f"{cfg.experiment}: semi-supervised pruning (label subsets: {', '.join(sorted(semi))})",
            ["signal", "task", "evaluation"], keep))
        if headline:
            files.copy(headline, out / "semi_supervised.png")
    naturals.write(cfg, out, plots=plots)
    found = findings.write(cfg, results, out, known)  # findings.md: the paper's claims tested on these rows
    if reproduction is not None:
        from . import reproduction as notes

        notes.write(cfg, out, reproduction, found, known)
    return out, summary
