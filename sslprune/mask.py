"""Sparsity as data: a mask is a dict of 0/1 tensors keyed by parameter name.

Prunable weights are the conv and linear weights, except the head (last fully-connected layer)
and any name given in `ignore`; batch-norm parameters and biases are 1-D and never pruned.
Pruning strategies are pure functions from (weights, mask) to a new mask. A mask is applied by
multiplying the weights after each optimizer step (one fused multi-tensor multiply) and on load,
so the model itself stays a plain nn.Module.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable

import torch
from torch import nn

from .model import HEAD

Mask = Dict[str, torch.Tensor]


def prunable(model: nn.Module, ignore: Iterable[str] = ()) -> list[str]:
    ignore = tuple(ignore)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            pname = f"{name}.weight" if name else "weight"
            if pname.startswith(HEAD) or (ignore and pname.startswith(ignore)):
                continue
            names.append(pname)
    return names


def ones(model: nn.Module, ignore: Iterable[str] = ()) -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.float32, device="cpu") for n in prunable(model, ignore)}


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


def shuffled(mask: Mask, generator: torch.Generator) -> Mask:
    """A random mask with the same global number of survivors (a random permutation of the flat mask)."""
    flat = torch.cat([m.flatten() for m in mask.values()])
    return _unflatten(flat[torch.randperm(len(flat), generator=generator)], mask)


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
        self.masks = [mask[n].to(device=params[n].device, dtype=params[n].dtype) for n in mask]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


def report(mask: Mask) -> dict:
    """Per-layer and global counts, for sparsity_report.json beside every saved mask."""
    layers = {n: {"kept": int(m.sum().item()), "total": m.numel(), "density": float(m.mean().item())}
              for n, m in mask.items()}
    kept, total = count(mask)
    return {"global": {"kept": kept, "total": total, "density": kept / total}, "layers": layers}
