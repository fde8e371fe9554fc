"""Results of an experiment, gathered from the store: tidy rows, a summary over seeds, plots.

The store is the source of truth; the report can be rebuilt from it at any time. Besides the
overall table and plot, an experiment gets:
- one plot per evaluation (pretext, each re-training start, each probe / SVM / fine-tuning);
- `rewind.md`: each signal's rewind point in every unit (updates, epochs, samples, % of training);
- `layerwise.md/png` when signals prune only part of the network (prune.scope / scopes);
- `semi_supervised.md/png` when a signal uses a label subset or S4L;
- `natural_sparsity.csv` and `weight_magnitudes.png` from each chain's trained dense network.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from .config import Config, rewind_steps, signal_prune
from .experiment import stages

COLUMNS = ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining", "seed", "accuracy"]
SUMMARY = ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining", "mean", "stderr",
           "count"]


def rows(cfg: Config) -> list[dict]:
    """One row per finished measurement of the experiment; unfinished stages are skipped."""
    out = []
    for stage in stages(cfg):
        if not stage.done():
            continue
        r = stage.result()
        out.append({"experiment": cfg.experiment, "signal": stage.signal,
                    "task": cfg.signals[stage.signal].task.name, "scope": signal_prune(cfg, stage.signal).scope,
                    "evaluation": r["evaluation"], "metric": r.get("metric", "top1"), "level": stage.level,
                    "remaining": r["remaining"], "seed": stage.seed, "accuracy": r["accuracy"]})
    return out


GROUP = ["experiment", "signal", "task", "scope", "evaluation", "metric", "level", "remaining"]


def summarize(results: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in results:
        groups[tuple(r[k] for k in GROUP)].append(r["accuracy"])
    out = []
    for key, accs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][4], kv[0][6])):
        n = len(accs)
        mean = sum(accs) / n
        # Standard error of the mean over seeds; undefined (empty) for a single seed.
        stderr = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) / math.sqrt(n) if n > 1 else None
        out.append({**dict(zip(GROUP, key)), "mean": mean, "stderr": stderr, "count": n})
    return out


def equivalence(rewind: str, steps_per_epoch: int, batch_size: int, total: int) -> dict:
    """One rewind point in every unit: updates k, epochs, samples seen and % of training."""
    k = rewind_steps(rewind, steps_per_epoch, batch_size, total)
    return {"rewind": rewind, "updates": k, "epochs": k / steps_per_epoch, "samples": k * batch_size,
            "percent": 100 * k / total, "batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
            "training_updates": total}


def rewinds(cfg: Config) -> list[dict]:
    """Each signal's late-resetting point in every unit, from the stored length of its training.

    E.g. ImageNet at batch 1536: 3ep = 2502 updates = 3,843,072 samples = 3.3% of 90 epochs."""
    out = []
    for stage in stages(cfg):
        if stage.kind != "imp" or stage.level != 0 or not stage.done():
            continue
        optim = cfg.signals[stage.signal].optim
        total = int(stage.result()["steps"])
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
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for row in data:
            w.writerow({k: ("" if row[k] is None else row[k]) for k in columns})


def markdown(summary: list[dict]) -> str:
    lines = ["| signal | evaluation | level | remaining | result (mean ± s.e.) | metric | seeds |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        se = "" if s["stderr"] is None else f" ± {100 * s['stderr']:.2f}"
        lines.append(f"| {s['signal']} | {s['evaluation']} | {s['level']} | {100 * s['remaining']:.2f}% | "
                     f"{100 * s['mean']:.2f}{se} | {s['metric']} | {s['count']} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path, title: str, panel: str = "", line=("signal", "evaluation")) -> None:
    """Accuracy against weights remaining (log scale, sparsest right), mean ± s.e. over seeds;
    one subplot per value of `panel` (e.g. scope), one line per value of the `line` keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = defaultdict(lambda: defaultdict(list))
    for s in summary:
        panels[s[panel] if panel else ""][tuple(s[k] for k in line)].append(s)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (name, lines) in zip(axes[0], sorted(panels.items())):
        for key, pts in sorted(lines.items()):
            pts.sort(key=lambda s: -s["remaining"])
            ax.errorbar([100 * p["remaining"] for p in pts], [100 * p["mean"] for p in pts],
                        yerr=[100 * (p["stderr"] or 0) for p in pts], marker="o", ms=3, capsize=2,
                        label=" / ".join(str(k) for k in key))
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%)")
        metrics = sorted({p["metric"] for pts in lines.values() for p in pts})
        ax.set_ylabel(f"{', '.join(metrics)} (%)")
        ax.set_title(f"{title} {panel}={name}" if panel else title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def write(cfg: Config) -> tuple[Path, list[dict]]:
    """Write every report file of the experiment (see the module docstring); return the folder."""
    from . import findings, naturals

    out = Path(cfg.store) / "reports" / cfg.experiment
    out.mkdir(parents=True, exist_ok=True)
    results = rows(cfg)
    summary = summarize(results)
    _write_csv(out / "results.csv", COLUMNS, results)
    _write_csv(out / "summary.csv", SUMMARY, summary)
    (out / "summary.md").write_text(f"# {cfg.experiment}\n\n" + markdown(summary))
    if summary:
        plot(summary, out / "accuracy_vs_remaining.png", cfg.experiment)
        for evaluation in sorted({s["evaluation"] for s in summary}):
            part = [s for s in summary if s["evaluation"] == evaluation]
            plot(part, out / f"accuracy_vs_remaining_{_slug(evaluation)}.png", f"{cfg.experiment}: {evaluation}",
                 line=("signal",))
    keep = 1 - cfg.prune.rate
    rw = rewinds(cfg)
    if rw:
        _write_csv(out / "rewind.csv", list(rw[0]), rw)
        (out / "rewind.md").write_text(f"# {cfg.experiment}: rewind points\n\n" + rewind_markdown(rw))
    if any(signal_prune(cfg, n).scope != "all" for n in cfg.signals):
        part = [s for s in summary if s["evaluation"] != "pretext"]
        (out / "layerwise.md").write_text(_family_markdown(part, f"{cfg.experiment}: layerwise pruning",
                                                           ["scope", "task", "evaluation"], keep))
        if part:
            plot(part, out / "layerwise.png", cfg.experiment, panel="scope", line=("task", "evaluation"))
    semi = {n for n, sig in cfg.signals.items() if sig.task.name == "s4l" or sig.task.label_fraction < 1}
    if semi:
        part = [s for s in summary if s["evaluation"] != "pretext"]
        (out / "semi_supervised.md").write_text(_family_markdown(
            part, f"{cfg.experiment}: semi-supervised pruning (label subsets: {', '.join(sorted(semi))})",
            ["signal", "task", "evaluation"], keep))
        if part:
            plot(part, out / "semi_supervised.png", cfg.experiment, panel="evaluation", line=("signal",))
    naturals.write(cfg, out)
    findings.write(cfg, results, out)  # findings.md: the paper's claims tested on these rows
    return out, summary
