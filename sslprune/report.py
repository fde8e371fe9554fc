"""Results of an experiment, gathered from the store: tidy rows, a summary over seeds, a plot.

The store is the source of truth; the report can be rebuilt from it at any time.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from .config import Config
from .pipeline import stages

COLUMNS = ["experiment", "signal", "evaluation", "level", "remaining", "seed", "accuracy"]
SUMMARY = ["experiment", "signal", "evaluation", "level", "remaining", "mean", "stderr", "count"]


def rows(cfg: Config) -> list[dict]:
    """One row per finished measurement of the experiment; unfinished stages are skipped."""
    out = []
    for stage in stages(cfg):
        if not stage.done():
            continue
        r = stage.result()
        out.append({"experiment": cfg.experiment, "signal": stage.signal, "evaluation": r["evaluation"],
                    "level": stage.level, "remaining": r["remaining"], "seed": stage.seed,
                    "accuracy": r["accuracy"]})
    return out


def summarize(results: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in results:
        groups[(r["experiment"], r["signal"], r["evaluation"], r["level"], r["remaining"])].append(r["accuracy"])
    out = []
    for (exp, signal, evaluation, level, remaining), accs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2], kv[0][3])):
        n = len(accs)
        mean = sum(accs) / n
        # Standard error of the mean over seeds; undefined (empty) for a single seed.
        stderr = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) / math.sqrt(n) if n > 1 else None
        out.append({"experiment": exp, "signal": signal, "evaluation": evaluation, "level": level,
                    "remaining": remaining, "mean": mean, "stderr": stderr, "count": n})
    return out


def _write_csv(path: Path, columns: list[str], data: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for row in data:
            w.writerow({k: ("" if row[k] is None else row[k]) for k in columns})


def markdown(summary: list[dict]) -> str:
    lines = ["| signal | evaluation | level | remaining | accuracy (mean ± s.e.) | seeds |", "|---|---|---|---|---|---|"]
    for s in summary:
        se = "" if s["stderr"] is None else f" ± {100 * s['stderr']:.2f}"
        lines.append(f"| {s['signal']} | {s['evaluation']} | {s['level']} | {100 * s['remaining']:.2f}% | "
                     f"{100 * s['mean']:.2f}{se} | {s['count']} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = defaultdict(list)
    for s in summary:
        lines[(s["signal"], s["evaluation"])].append(s)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (signal, evaluation), pts in sorted(lines.items()):
        pts.sort(key=lambda s: -s["remaining"])
        ax.errorbar([100 * p["remaining"] for p in pts], [100 * p["mean"] for p in pts],
                    yerr=[100 * (p["stderr"] or 0) for p in pts], marker="o", ms=3, capsize=2,
                    label=f"{signal} / {evaluation}")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(cfg: Config) -> tuple[Path, list[dict]]:
    """Write results.csv, summary.csv, summary.md and accuracy_vs_remaining.png; return the folder."""
    out = Path(cfg.store) / "reports" / cfg.experiment
    out.mkdir(parents=True, exist_ok=True)
    results = rows(cfg)
    summary = summarize(results)
    _write_csv(out / "results.csv", COLUMNS, results)
    _write_csv(out / "summary.csv", SUMMARY, summary)
    (out / "summary.md").write_text(f"# {cfg.experiment}\n\n" + markdown(summary))
    if summary:
        plot(summary, out / "accuracy_vs_remaining.png", cfg.experiment)
    return out, summary
