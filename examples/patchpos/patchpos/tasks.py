"""Patch position: which cell of a `grid` x `grid` partition of the image is this patch?

Every image is cut into its grid x grid cells; each cell, scaled back up to the image's size by
pixel repetition (exact, no interpolation), is one input and its cell index the label, so the batch
grows grid^2-fold (as RotNet's does four-fold). The network has to tell a digit's top-left from its
bottom-right from the content alone. No random numbers are drawn: every cell of every image is used.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from sslprune.compute.classification import Accuracy


class PatchPosition:
    index_targets = False  # batches carry labels (unused), not data-set indices

    def __init__(self, data, grid: int = 2):
        if grid < 2:
            raise ValueError(f"grid={grid} must be >= 2")
        self.grid = grid
        self.num_outputs = grid * grid

    def prepare(self, x, y, draws=None):
        h, w = x.shape[-2] // self.grid, x.shape[-1] // self.grid
        cells = [x[..., i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(self.grid) for j in range(self.grid)]
        x = torch.cat([c.repeat_interleave(self.grid, -2).repeat_interleave(self.grid, -1) for c in cells])
        target = torch.arange(self.num_outputs, device=x.device).repeat_interleave(len(y))
        return x, target

    def eval_prepare(self, x, y, draws=None):
        return self.prepare(x, y, draws)

    def loss(self, outputs, target):
        return F.cross_entropy(outputs.float(), target)

    def score(self, outputs, target):
        return (outputs.argmax(1) == target).sum(), len(target)

    def metric(self):
        return Accuracy(self)

    def state_dict(self):
        return {}  # nothing beyond the network (a memory bank or a queue would be returned here)

    def load_state_dict(self, state):
        pass

    def bind(self, loader):
        pass
