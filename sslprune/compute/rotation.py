"""Rotation tasks: RotNet's four quarter turns, and S4L-Rotation, which adds the labels of a subset."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from . import distributed
from .classification import Accuracy, Labels


class RotNet(Labels):
    """Gidaris et al.: every image in its four exact quarter turns, the turn index as label.

    `torch.rot90` is exact (a permutation of pixels), unlike a random-angle rotation that
    interpolates; the batch grows four-fold and holds each image once per rotation."""

    name = "rotnet"

    def __init__(self, num_classes: int = 0):
        self.num_outputs = 4

    def prepare(self, x, y, draws=None):
        x = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        target = torch.arange(4, device=x.device).repeat_interleave(len(y))
        return x, target


class S4L(Labels):
    """S4L-Rotation (Zhai et al. 2019): cross-entropy on the labelled images plus
    rotation_weight x the RotNet loss on every image.

    One head of 4 + C outputs: the first 4 score the quarter turn, the rest the classes. Images
    outside the label subset carry label -1 and add nothing to the label loss, which is taken on
    the un-rotated copy of each labelled image (a turned digit is not a digit of its class)."""

    name = "s4l"

    def __init__(self, num_classes: int, rotation_weight: float):
        self.num_classes, self.rotation_weight = num_classes, rotation_weight
        self.num_outputs = 4 + num_classes

    def prepare(self, x, y, draws=None):
        """RotNet's four turns; target column 0 = turn, column 1 = label of un-rotated copies, else -1."""
        x, turn = RotNet().prepare(x, y)
        label = torch.cat([y, torch.full((3 * len(y),), -1, dtype=y.dtype, device=y.device)])
        return x, torch.stack([turn, label], 1)

    def loss(self, outputs, target):
        rotation = F.cross_entropy(outputs[:, :4], target[:, 0])
        per_image = F.cross_entropy(outputs[:, 4:], target[:, 1], ignore_index=-1, reduction="none")
        # Mean over the labelled images of the global batch (under DDP this rank's share of it, as
        # gradients are averaged over ranks); a batch without any contributes 0 (not 0/0), no host sync.
        labelled, world = distributed.global_count((target[:, 1] >= 0).sum())
        return per_image.sum() * world / labelled.clamp(min=1) + self.rotation_weight * rotation

    def score(self, outputs, target):
        """Training accuracy: the rotation's (every image counts, so the count needs no sync)."""
        return (outputs[:, :4].argmax(1) == target[:, 0]).sum(), len(target)

    def eval_prepare(self, x, y, draws=None):
        return x, y

    def metric(self):
        return Accuracy(_ClassOutputs(self.num_classes))


class _ClassOutputs(Labels):
    """S4L's head read as a plain classifier: its class outputs (after the 4 rotation ones)."""

    def __init__(self, num_classes: int):
        self.num_outputs = num_classes

    def loss(self, logits, target):
        return super().loss(logits[:, 4:], target)

    def score(self, outputs, target):
        return super().score(outputs[:, 4:], target)
