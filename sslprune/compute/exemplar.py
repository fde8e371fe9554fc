"""Exemplar: every training image is its own class, learnt with a triplet loss on two views."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from . import distributed
from .classification import Labels, at_least_fp32
from .seed import Draws

from ..core.schema import TaskConfig


class Exemplar(Labels):
    """Exemplar (Dosovitskiy et al.) as Doersch & Zisserman implement it: every training image with
    its transformations is its own class, learnt with a triplet margin loss.

    `prepare` makes two independently transformed views of each (already pad-cropped/flipped,
    normalised) image: colour jitter (brightness, contrast, and saturation on colour images) and a
    small random rotation, the paper's additions to the standard augmentation. The head outputs an
    embedding, L2-normalised in the loss. Triplets: anchor = view 1 of image i, positive = view 2
    of image i, negative = the view 2 of another image of the batch closest to the anchor (the
    hardest in-batch negative), so a zero loss means every anchor is nearer its own pair than any
    other image by the margin, which is exactly what `score` counts (within a training batch;
    evaluation, `PairRetrieval`, searches the whole test set). The draws of each view come from the
    batch's `Draws` (eight numbers per image), so they depend on the image's global position only.
    Under DDP the hardest negative is searched among the view 2 of the *global* batch (gathered,
    with gradients flowing back to the rank that computed them): 2 ranks mine what 1 rank does."""

    name = "exemplar"
    jitter = 0.4  # brightness, contrast and saturation factors drawn uniformly in [1 - 0.4, 1 + 0.4]
    max_degrees = 10.0  # rotation angle drawn uniformly in [-10, 10] degrees
    grey = (0.299, 0.587, 0.114)  # ITU-R 601 luma, what "saturation" blends towards

    def __init__(self, cfg: TaskConfig, mean: tuple, std: tuple):
        self.num_outputs, self.margin = cfg.embedding, cfg.margin
        self.mean, self.std = tuple(mean), tuple(std)
        self._made = {}  # (device, dtype) -> the constants of `view` there

    def _constants(self, x: torch.Tensor) -> tuple:
        """mean, std and the luma weights as (1, C, 1, 1) tensors on x's device and dtype, made once:
        built in every view they were three small host-to-device copies per view, six per step."""
        key = (x.device, x.dtype)
        if key not in self._made:
            self._made[key] = tuple(torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                               for v in (self.mean, self.std, self.grey))
        return self._made[key]

    def view(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One transformed view per image of a normalised batch from its four uniform draws `u`
        (b x 4 in [0, 1): brightness, contrast, saturation, angle), whatever the channels."""
        b, c = x.shape[:2]
        mean, std, grey = self._constants(x)
        u = u.to(device=x.device, dtype=x.dtype) * 2 - 1
        bright, contrast, sat = (1 + self.jitter * u[:, i].view(b, 1, 1, 1) for i in range(3))
        # Jitter acts on intensities in [0, 1]: brightness scales towards black, which is not a
        # scaling of the normalised values.
        raw = x * std + mean
        raw = raw * bright
        level = raw.mean(dim=(1, 2, 3), keepdim=True)
        raw = (raw - level) * contrast + level
        if c == 3:
            luma = (raw * grey).sum(1, keepdim=True)
            raw = (raw - luma) * sat + luma
        raw = raw.clamp(0, 1)
        angle = u[:, 3] * math.radians(self.max_degrees)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(raw.shape), align_corners=False)
        raw = F.grid_sample(raw, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (raw - mean) / std

    def prepare(self, x, y, draws: Draws):
        """[view 1 of every image; view 2 of every image]; the target is each row's image index."""
        ids = torch.arange(len(x), device=x.device)
        u = draws.uniform("exemplar-views", 8)
        return torch.cat([self.view(x, u[:, :4]), self.view(x, u[:, 4:])]), torch.cat([ids, ids])

    def _pairs(self, outputs):
        """(local anchors, local positives, the positives of the global batch, offset of ours in it)."""
        anchor, positive = F.normalize(outputs, dim=1).chunk(2)
        everyone, offset = distributed.gather_rows(positive)
        return anchor, positive, everyone, offset

    def loss(self, outputs, target):
        anchor, positive, everyone, offset = self._pairs(outputs)
        own = offset + torch.arange(len(anchor), device=anchor.device)
        with torch.no_grad():  # on unit vectors the largest cosine is the smallest distance
            sim = anchor @ everyone.T
            hardest = sim.scatter_(1, own.view(-1, 1), -math.inf).argmax(1)
        return F.triplet_margin_loss(anchor, positive, everyone[hardest], margin=self.margin)

    def score(self, outputs, target):
        """Anchors whose nearest view 2 in the (global) batch, by cosine, is their own pair."""
        with torch.no_grad():
            anchor, _, everyone, offset = self._pairs(outputs)
            own = offset + torch.arange(len(anchor), device=anchor.device)
            return ((anchor @ everyone.T).argmax(1) == own).sum(), len(anchor)

    def metric(self):
        return PairRetrieval(self)


class PairRetrieval:
    """Exemplar's evaluation: every test anchor looks for its own view 2 among the view 2 of the
    whole test set (chance 1 / N), and the triplet loss takes its hardest negative there too.

    Pairs are compared across the whole set, not within an evaluation batch, so the number does
    not scale with run.eval_batch_size or the number of ranks (which are not part of a run's
    identity); the rows of every rank are gathered first."""

    chunk = 1024  # anchors per similarity matrix (chunk x N): bounded memory on ImageNet's 50k images

    def __init__(self, task: Exemplar):
        self.task, self.anchors, self.positives = task, [], []

    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        anchor, positive = F.normalize(at_least_fp32(outputs.detach()), dim=1).chunk(2)
        self.anchors.append(anchor)
        self.positives.append(positive)

    @torch.no_grad()
    def result(self) -> dict:
        d = self.task.num_outputs
        device = self.anchors[0].device if self.anchors else distributed.collective_device()
        anchors, positives = (distributed.gather_test_rows(torch.cat(rows) if rows else
                                                           torch.zeros(0, d, device=device))
                              for rows in (self.anchors, self.positives))
        correct, loss = 0, 0.0
        for start in range(0, len(anchors), self.chunk):
            a = anchors[start:start + self.chunk]
            own = torch.arange(start, start + len(a), device=a.device)
            sim = a @ positives.T
            correct += int((sim.argmax(1) == own).sum())
            hardest = sim.scatter_(1, own.view(-1, 1), -math.inf).argmax(1)
            loss += float(F.triplet_margin_loss(a, positives[own], positives[hardest], margin=self.task.margin,
                                                reduction="sum"))
        n = len(anchors)
        return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "count": n, "metric": "pair_top1"}
