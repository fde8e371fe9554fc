"""Training objectives. A task turns a labelled batch into (inputs, targets) and owns the head size.

The training loop knows nothing about rotations or labels: a new objective is a new task.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .config import TaskConfig, ConfigError, TASKS


class Labels:
    """Supervised classification on the data set's own labels."""

    name = "labels"

    def __init__(self, num_classes: int):
        self.num_outputs = num_classes

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)


class RotNet(Labels):
    """Gidaris et al.: every image in its four exact quarter turns, the turn index as label.

    `torch.rot90` is exact (a permutation of pixels), unlike a random-angle rotation that
    interpolates; the batch grows four-fold and holds each image once per rotation."""

    name = "rotnet"

    def __init__(self, num_classes: int = 0):
        self.num_outputs = 4

    def prepare(self, x, y):
        x = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        target = torch.arange(4, device=x.device).repeat_interleave(len(y))
        return x, target


def make(cfg: TaskConfig, num_classes: int):
    if cfg.name not in TASKS:
        raise ConfigError(f"task.name={cfg.name!r} is not one of {', '.join(TASKS)}")
    return {"labels": Labels, "rotnet": RotNet}[cfg.name](num_classes)
