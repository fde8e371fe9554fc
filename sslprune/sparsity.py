"""Natural sparsity: how many weights training alone drives to zero (paper Figures 3b, 6 and 10).

The paper finds trained CIFAR-10 networks 80-85% sparse "at machine precision" before any pruning,
which is why its random baseline is adjusted (mask.adjusted_random). A weight counts as naturally
zero when |w| < ZERO, float32's machine epsilon (2^-23, about 1.2e-7): the smallest relative step
of the format the weights are trained in, so such a weight is below the rounding error of any
unit-scale activation it is added to, and cannot change what the network computes.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, Sequence

import torch

from . import checkpoint
from .model import HEAD
from .config import Config, signal_data

ZERO = torch.finfo(torch.float32).eps
# Histogram bins of log10|w|, 0.25 decades wide; values beyond either end fall into the end bins.
EDGES = tuple(-16 + 0.25 * i for i in range(73))  # 1e-16 .. 1e2
COLUMNS = ["signal", "seed", "dataset", "layer", "total", "zero", "fraction"]


def naturally_zero(w: torch.Tensor) -> torch.Tensor:
    """Boolean tensor: which weights are zero at machine precision."""
    return w.detach().abs() < ZERO


def natural(weights: Dict[str, torch.Tensor], names: Iterable[str]) -> dict:
    """Fraction of the named weights that are naturally zero, per layer and over all of them."""
    layers = {}
    for n in names:
        total, zero = weights[n].numel(), int(naturally_zero(weights[n]).sum())
        layers[n] = {"total": total, "zero": zero, "fraction": zero / total}
    total, zero = sum(v["total"] for v in layers.values()), sum(v["zero"] for v in layers.values())
    return {"global": {"total": total, "zero": zero, "fraction": zero / total if total else 0.0}, "layers": layers}


def histogram(weights: Dict[str, torch.Tensor], names: Iterable[str], bins: Sequence[float] = EDGES) -> dict:
    """Counts of log10|w| over the named weights in the bins between consecutive `bins` edges.

    Exact zeros have no logarithm and are counted apart (`zeros`); other values beyond the edges
    are counted in the first or last bin, so sum(counts) + zeros is the number of weights."""
    edges = torch.tensor(list(bins), dtype=torch.float64)
    w = torch.cat([weights[n].detach().flatten().double().abs() for n in names])
    exact = w == 0
    logs = torch.log10(w[~exact]).clamp(edges[0], edges[-1])
    counts = torch.histogram(logs, bins=edges).hist
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts], "zeros": int(exact.sum())}


def write(cfg: Config, out_dir: Path) -> list[dict]:
    """natural_sparsity.csv and weight_magnitudes.png of every chain's trained dense network.

    The dense network is IMP level 0 (its model.pt); chains whose level 0 is not done are
    skipped. The weights counted are every conv and linear weight but the head's (what IMP can
    prune with prune.scope=all). One CSV row per layer and a
    `global` row per chain; one plot panel per data set, one line per signal (seeds pooled)."""
    from .pipeline import chains  # here, not at the top: pipeline -> stage -> mask -> this module
    from .stage import ImpLevel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    hists: dict = defaultdict(dict)  # dataset -> signal -> pooled histogram
    for chain in chains(cfg):
        dense = ImpLevel(cfg, chain[0].signal, chain[0].seed, 0)
        if not dense.done():
            continue
        weights = checkpoint.load(dense.dir / "model.pt")
        # Every conv/linear weight but the head's, whatever the chain's scope: natural sparsity is a
        # property of the trained network, not of the layers a chain happens to prune.
        names = [k for k, v in weights.items() if v.ndim >= 2 and not k.startswith(HEAD)]
        data = signal_data(cfg, dense.signal).name
        stats = natural(weights, names)
        for layer, s in [*stats["layers"].items(), ("global", stats["global"])]:
            rows.append({"signal": dense.signal, "seed": dense.seed, "dataset": data, "layer": layer, **s})
        h = histogram(weights, names)
        pooled = hists[data].setdefault(dense.signal, {"edges": h["edges"], "counts": [0] * len(h["counts"]),
                                                       "zeros": 0, "natural": 0})
        pooled["counts"] = [a + b for a, b in zip(pooled["counts"], h["counts"])]
        pooled["zeros"] += h["zeros"]
        pooled["natural"] += stats["global"]["zero"]
    with open(out_dir / "natural_sparsity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    if hists:
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
