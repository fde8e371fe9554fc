"""What a network costs: its parameters and the multiply-accumulates (MACs) of one forward pass,
dense and under a mask.

Counting convention (the one behind the published dense counts, e.g. torchvision's 4.09 G for
ResNet-50 at 224 px):
- a convolution costs (weights kept) x (output positions): each kept weight is one multiply-add at
  every output position (groups are already in the weight's shape); a linear layer costs its kept
  weights once per input row; the head is counted as it is (dense: it is never pruned);
- batch norm costs nothing (at inference it is an affine map folded into the layer before it), nor
  do biases, pooling, ReLU and residual additions: they are additions or comparisons, not MACs;
- parameters are every `nn.Parameter` (batch-norm scales and shifts and biases included, running
  statistics are buffers and are not); "kept" subtracts the weights the mask removes.

Output positions come from forward hooks on a batch of one; the network may live on the meta
device (`shape`: the network's output sizes only, no arithmetic), so a 224 px ResNet-50 is counted
in milliseconds and a stage's trained weights are never touched.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

FIELDS = ("params", "params_kept", "prunable", "prunable_kept", "macs_dense", "macs")


def layers(net: nn.Module, size: tuple) -> dict:
    """{weight name: (module, output positions per image)} of every conv and linear layer that a
    forward pass of one `size` (C, H, W) image runs."""
    positions: dict = {}
    hooks = []
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(m, inputs, out, name=name):
                # conv: H_out x W_out; linear: the rows it maps (1 per image for a flattened vector)
                per = math.prod(out.shape[2:]) if isinstance(m, nn.Conv2d) else math.prod(out.shape[1:-1])
                positions[name] = positions.get(name, 0) + per  # a module run twice costs twice
            hooks.append(module.register_forward_hook(hook))
    param = next(net.parameters())
    was_training = net.training
    net.eval()  # batch norm must not update its running statistics on this input
    try:
        with torch.no_grad():
            net(torch.zeros((1, *size), device=param.device, dtype=param.dtype))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    modules = dict(net.named_modules())
    return {(f"{n}.weight" if n else "weight"): (modules[n], p) for n, p in positions.items()}


def count(net: nn.Module, size: tuple, mask: Optional[Dict[str, torch.Tensor]] = None) -> dict:
    """Parameters and MACs of `net` on one image of `size` (C, H, W), dense and under `mask`
    (parameter name -> 0/1 tensor; names outside it are dense). See the module docstring."""
    mask = mask or {}
    kept_of = {n: int(m.sum().item()) for n, m in mask.items()}
    params = sum(p.numel() for p in net.parameters())
    macs_dense = macs = 0
    for name, (module, per) in layers(net, size).items():
        total = module.weight.numel()
        macs_dense += total * per
        macs += kept_of.get(name, total) * per
    prunable = sum(m.numel() for m in mask.values())
    prunable_kept = sum(kept_of.values())
    return {"params": params, "params_kept": params - (prunable - prunable_kept), "prunable": prunable,
            "prunable_kept": prunable_kept, "macs_dense": macs_dense, "macs": macs}
