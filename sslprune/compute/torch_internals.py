"""The two torch internals sslprune uses, named here once; tests/test_library_apis.py pins what
each is relied on to do, so a torch that changes one fails that test by name.

- `multiply_`: `torch._foreach_mul_`, one fused multi-tensor kernel (on CUDA) that zeroes the
  pruned weights after every optimizer step. torch 2.14 has no public spelling; torch 2.15 adds
  the beta `torch.foreach.mul_` (same kernels) and keeps `torch._foreach_mul_` while code migrates.
- `BatchNorm`: `nn.modules.batchnorm._BatchNorm`, the base of BatchNorm1d/2d/3d. Their forward is
  its forward; only `_check_input_dim` differs, so a subclass that overrides it serves 1-d and 2-d
  layers alike (compute/runtime.py's GlobalBatchNorm), with BatchNorm's parameters and buffers.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def multiply_(tensors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]) -> None:
    """tensors[i] *= factors[i] in place, for every i (equal strides make it one kernel on CUDA)."""
    torch._foreach_mul_(tensors, factors)
