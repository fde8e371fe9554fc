"""The natural-sparsity report (paper Figures 3b, 6 and 10): natural_sparsity.csv and
weight_magnitudes.png, from the `weights.json` each chain's IMP level 0 wrote beside its trained
dense network (sslprune.compute.sparsity.summary). Reads JSON only.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ..core import store as files
from ..core.schema import Config
from ..core.stage import ImpLevel
from ..core.sweep import signal_data
from . import figures
from .experiment import chains

FILE = "weights.json"
COLUMNS = ["signal", "seed", "dataset", "layer", "total", "zero", "fraction"]
ZERO = 2.0 ** -23  # float32 machine epsilon: compute.sparsity.ZERO


def write(cfg: Config, out_dir: Path, plots: bool = True) -> list[dict]:
    """natural_sparsity.csv and weight_magnitudes.png of every chain's trained dense network.

    Chains whose level 0 is not done (or predates weights.json) are skipped. One CSV row per
    layer and a `global` row per chain; one plot panel per data set, one line per signal (seeds
    pooled)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    hists: dict = defaultdict(dict)  # dataset -> signal -> pooled histogram
    for chain in chains(cfg):
        dense = ImpLevel(cfg, chain[0].signal, chain[0].seed, 0)
        path = dense.dir / FILE
        if not path.exists() or not dense.done():
            continue
        summary = files.read_json(path)
        stats, h = summary["natural"], summary["histogram"]
        data = signal_data(cfg, dense.signal).name
        for layer, s in [*stats["layers"].items(), ("global", stats["global"])]:
            rows.append({"signal": dense.signal, "seed": dense.seed, "dataset": data, "layer": layer, **s})
        pooled = hists[data].setdefault(dense.signal, {"edges": h["edges"], "counts": [0] * len(h["counts"]),
                                                       "zeros": 0, "natural": 0})
        pooled["counts"] = [a + b for a, b in zip(pooled["counts"], h["counts"])]
        pooled["zeros"] += h["zeros"]
        pooled["natural"] += stats["global"]["zero"]
    files.write_csv(out_dir / "natural_sparsity.csv", COLUMNS, rows)  # never through a link at the name
    if hists and plots:
        _plot(hists, out_dir / "weight_magnitudes.png")
    return rows


def _plot(hists: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(hists), figsize=(6 * len(hists), 4), squeeze=False)
    for ax, (data, by_signal) in zip(axes[0], sorted(hists.items())):
        for signal, h in sorted(by_signal.items()):
            n = sum(h["counts"]) + h["zeros"]
            centres = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
            ax.plot(centres, [c / n for c in h["counts"]],
                    label=f"{signal} ({100 * h['natural'] / n:.1f}% < eps, {100 * h['zeros'] / n:.1f}% exactly 0)")
        ax.axvline(math.log10(ZERO), color="k", ls="--", lw=0.8)
        ax.set_xlabel("log10 |w| (dashed: float32 machine epsilon)")
        ax.set_ylabel("fraction of prunable weights")
        ax.set_title(f"trained dense network, {data}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    figures.save(fig, path, 120)
    plt.close(fig)
