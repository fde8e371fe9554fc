"""Natural sparsity: how many weights training alone drives to zero (paper Figures 3b, 6 and 10).

Computed by the stage that trained the weights (IMP level 0 writes `weights.json` beside its
model.pt), so the report reads JSON and never loads a network.

The paper finds trained CIFAR-10 networks 80-85% sparse "at machine precision" before any pruning,
which is why its random baseline is adjusted (mask.adjusted_random). A weight counts as naturally
zero when |w| < ZERO, float32's machine epsilon (2^-23, about 1.2e-7): the smallest relative step
of the format the weights are trained in, so such a weight is below the rounding error of any
unit-scale activation it is added to, and cannot change what the network computes.
"""
from __future__ import annotations

from typing import Dict, Iterable, Sequence

import torch

from .model import HEAD

ZERO = torch.finfo(torch.float32).eps
# Histogram bins of log10|w|, 0.25 decades wide; values beyond either end fall into the end bins.
EDGES = tuple(-16 + 0.25 * i for i in range(73))  # 1e-16 .. 1e2


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


def summary(weights: Dict[str, torch.Tensor]) -> dict:
    """What the report needs of a trained network's weights (sslprune.control.naturals reads it):
    natural sparsity per layer and globally, and the histogram of log10 |w|, over every conv and
    linear weight but the head's. Whatever the chain's scope: natural sparsity is a property of the
    trained network, not of the layers a chain happens to prune."""
    names = [k for k, v in weights.items() if v.ndim >= 2 and not k.startswith(HEAD)]
    return {"natural": natural(weights, names), "histogram": histogram(weights, names), "zero_below": ZERO}
