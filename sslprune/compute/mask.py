"""Sparsity as data: a mask is a dict of 0/1 tensors keyed by parameter name.

Prunable weights are the conv and linear weights, except the head (last fully-connected layer)
and any name given in `ignore`; batch-norm parameters and biases are 1-D and never pruned.
Layerwise pruning narrows them to the layers up to a cut point (`scope`): a mask holds only the
weights it prunes, so everything downstream (magnitude pruning, the random controls, density)
works on those layers alone while the others stay dense.
Pruning strategies are pure functions from (weights, mask) to a new mask. A mask is applied by
multiplying the weights after each optimizer step (one fused multi-tensor multiply) and on load,
so the model itself stays a plain nn.Module.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable

import torch
from torch import nn

from .model import cut_points, weights as layer_weights
from .sparsity import naturally_zero
from .torch_internals import multiply_

Mask = Dict[str, torch.Tensor]


def prunable(model: nn.Module, ignore: Iterable[str] = (), scope: str = "all") -> list[str]:
    """Names of the weights IMP prunes: `scope` "all", or the layers up to and including that cut point."""
    ignore = tuple(ignore)
    names = [n for n in layer_weights(model) if not (ignore and n.startswith(ignore))]
    if scope == "all":
        return names
    points = cut_points(model)
    if scope not in points:
        raise ValueError(f"scope={scope!r} is not 'all' nor a cut point of this network: {', '.join(points)}")
    inside: set[str] = set()
    for cut, params in points.items():
        inside.update(params)
        if cut == scope:
            break
    return [n for n in names if n in inside]


def ones(model: nn.Module, ignore: Iterable[str] = (), scope: str = "all") -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.float32, device="cpu") for n in prunable(model, ignore, scope)}


def count(mask: Mask) -> tuple[int, int]:
    kept = sum(int(m.sum().item()) for m in mask.values())
    return kept, sum(m.numel() for m in mask.values())


def density(mask: Mask) -> float:
    kept, total = count(mask)
    return kept / total


def magnitude(weights: Dict[str, torch.Tensor], mask: Mask, rate: float) -> Mask:
    """Global magnitude pruning: remove `rate` of the surviving weights, smallest |w| first.

    Removes ceil(rate * surviving) weights so density after L levels is 0.8^L up to rounding;
    ties are broken by position (a stable sort), so the result is deterministic."""
    names = list(mask)
    kept, _ = count(mask)
    n_prune = int(math.ceil(rate * kept))
    scores = torch.cat([
        torch.where(mask[n].bool(), weights[n].detach().float().abs().cpu(), torch.tensor(float("inf"))).flatten()
        for n in names])
    order = torch.sort(scores, stable=True).indices
    flat = torch.cat([mask[n].flatten() for n in names]).clone()
    flat[order[:n_prune]] = 0
    return _unflatten(flat, mask)


def survivors(total: int, rate: float, levels: int) -> int:
    """How many of `total` prunable weights `levels` levels of `magnitude` at `rate` keep (its count
    alone: ceil(rate * kept) removed per level), whatever the weights."""
    kept = total
    for _ in range(levels):
        kept -= int(math.ceil(rate * kept))
    return kept


def drawn(like: Mask, kept: int, generator: torch.Generator) -> Mask:
    """A random mask over `like`'s weights keeping `kept` of them, positions drawn from `generator`
    (the random baseline: it depends on the count and the draw, not on which weights a mask kept)."""
    n = sum(m.numel() for m in like.values())
    flat = torch.zeros(n)
    flat[torch.randperm(n, generator=generator)[:kept]] = 1
    return _unflatten(flat, like)


def adjusted_random(mask: Mask, trained: Dict[str, torch.Tensor], generator: torch.Generator) -> Mask:
    """The random baseline adjusted for natural sparsity (the paper's CIFAR-10 caveat).

    `trained` holds the dense network's weights after training (IMP level 0 of the same chain).
    Weights that training alone drove to zero (sparsity.naturally_zero) are removed first, then
    randomly chosen others, until exactly as many weights survive as `mask` keeps: a plain random
    mask would keep many weights that are zero anyway and so be sparser than its count says.
    When the natural zeros alone remove more than that, every non-zero weight is kept and randomly
    chosen zero ones make up the count, so the number kept always equals the IMP mask's."""
    kept, _ = count(mask)
    zero = torch.cat([naturally_zero(trained[n].detach().cpu()).flatten() for n in mask])
    perm = torch.randperm(len(zero), generator=generator)
    # A stable sort on "is zero" of a random permutation: non-zero weights first, each group in random order.
    order = perm[torch.sort(zero[perm].to(torch.uint8), stable=True).indices]
    flat = torch.zeros(len(zero))
    flat[order[:kept]] = 1
    return _unflatten(flat, mask)


def _unflatten(flat: torch.Tensor, like: Mask) -> Mask:
    out, i = {}, 0
    for n, m in like.items():
        out[n] = flat[i:i + m.numel()].view_as(m).clone()
        i += m.numel()
    return out


def is_nested(inner: Mask, outer: Mask) -> bool:
    """True when every weight kept by `inner` is kept by `outer`."""
    return all(bool((inner[n] <= outer[n]).all()) for n in inner)


class Applier:
    """Zeroes pruned weights in place with one fused multiply over all masked tensors."""

    def __init__(self, model: nn.Module, mask: Mask):
        params = dict(model.named_parameters())
        missing = [n for n in mask if n not in params]
        if missing:
            raise KeyError(f"mask names parameters the model lacks: {missing[:5]}")
        self.params = [params[n] for n in mask]
        # Each mask takes its parameter's strides (channels_last on CUDA): the fused multi-tensor
        # multiply needs equal strides, otherwise it falls back to one kernel per tensor.
        self.masks = [torch.empty_like(params[n]).copy_(mask[n]) for n in mask]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.params:
            multiply_(self.params, self.masks)


def report(mask: Mask) -> dict:
    """Per-layer and global counts, for sparsity_report.json beside every saved mask."""
    layers = {n: {"kept": int(m.sum().item()), "total": m.numel(), "density": float(m.mean().item())}
              for n, m in mask.items()}
    kept, total = count(mask)
    return {"global": {"kept": kept, "total": total, "density": kept / total}, "layers": layers}
