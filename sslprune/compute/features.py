"""Frozen features of a data set's splits, and their standardisation: what the standardised linear
probes (sslprune.compute.probe) and the SVMs (sslprune.compute.svm) are trained on.

Both read the un-augmented images (the loader's test path: central crop, no augmentation) of
one split, in its order, through the backbone in eval mode, in one process (no rank sharding:
these stages are short, every rank computes the same numbers).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from . import loader as loaders
from .dataset import MemoryData


def as_test(data, split: str):
    """The data set with `split` in the place of its test split: the loader's test path has the
    central-crop transform and no augmentation, which is what features are extracted with."""
    if split == "test":
        return data
    if isinstance(data, MemoryData):
        return replace(data, test=data.train)
    return replace(data, test_dir=data.train_dir, test_samples=data.train_samples, test_limit=data.train_limit)


@torch.no_grad()
def extract(backbone: torch.nn.Module, data, split: str, device: torch.device, batch_size: int,
            dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x D features on the CPU, the N targets as the loader gives them) of one split, in its
    order, un-augmented. Each batch's features are cast to `dtype` before leaving the device: the
    probes take float64, the SVMs float32 (then float64), which is not the same where the backbone
    computes in float64."""
    backbone = backbone.to(device).eval()
    xs, ys = [], []
    for x, y in loaders.make(as_test(data, split), 1, 0, device).eval_batches(batch_size):
        xs.append(backbone(x).to(dtype).cpu())
        ys.append(y.cpu())
    return torch.cat(xs), torch.cat(ys)


def standardise(train_x, test_x) -> tuple:
    """Both splits standardised with the training split's per-dimension mean and (unbiased)
    standard deviation; a dimension constant over the training split (a dead unit) is centred and
    left unscaled.

    Takes torch tensors (the probes) or numpy arrays (the SVMs) and computes in the library it is
    given: their reductions sum in different orders, and the recorded results of each were made
    with its own."""
    xp = torch if isinstance(train_x, torch.Tensor) else np
    mean, std = train_x.mean(0), xp.std(train_x, 0, correction=1)
    std[~(std > 1e-12)] = 1.0
    return (train_x - mean) / std, (test_x - mean) / std
