"""Two-view self-supervision: what SimCLR, MoCo v2 and BYOL share (views, projection tail, the kNN
monitor), and SimCLR itself. MoCo v2 and BYOL, which add a momentum target, are in momentum.py.

The network's head is the projection MLP's first layer (Linear, `hidden` outputs, the network's
`num_outputs`); the rest of the MLP (`tail`: [BatchNorm,] ReLU, Linear to `embedding`) is a
task-owned trainable module (`modules()`): the trainer optimises it with the network, it is never
pruned, and it is task state (checkpointed, and saved and restored at the rewind point with W_k).

Pretext metric: weighted kNN top-1 on the test split (Wu et al. 2018, as NPID's: k = 200, votes
exp(cos / 0.07)) against a bank of every training image's latest embedding (its first view, from
the online network, updated as the batches pass, under DDP gathered so every rank holds the same
bank). The same number at every IMP level: comparable across levels and across these signals."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import distributed, seed as seeds
from .classification import Labels, at_least_fp32
from .model import seeded_linear
from .npid import NearestNeighbours
from .runtime import GlobalBatchNorm
from .seed import Draws
from .views import DRAWS, View, two_views

from ..core.schema import TaskConfig


class TwoViews(Labels):
    """The shared part of the two-view tasks (see the module docstring); subclasses say how the
    views are made (`jitter`, `blur`, `solarize`: per view) and what the loss is."""

    name = "two_views"
    index_targets = True  # the kNN bank is indexed by image
    knn, knn_temperature = 200, 0.07
    jitter = 0.4
    blur = (0.5, 0.5)  # probability of a blur, view 1 and view 2
    solarize = (0.0, 0.0)
    tail_norm = False  # a BatchNorm before the tail's ReLU (BYOL's projector has one)

    def __init__(self, cfg: TaskConfig, data):
        self.num_outputs, self.embedding, self.num_classes = cfg.hidden, cfg.embedding, data.num_classes
        self.temperature = cfg.temperature
        flip = getattr(data, "flip", True)
        self.views = tuple(View(data.mean, data.std, flip, self.jitter, self.blur[i], self.solarize[i]) for i in (0, 1))
        self.tail = self.bank = self.labels = None
        self._seen = None

    # ------------------------------------------------------------ modules and state

    def _layer(self, n_in: int, n_out: int, g: torch.Generator, device) -> nn.Linear:
        return seeded_linear(n_in, n_out, g, device)

    def bind(self, loader) -> None:
        """The tail (drawn from the loader's seed), and the kNN bank: random unit rows, one per training image."""
        g = seeds.generator(loader.seed, f"{self.name}-tail")
        parts = [GlobalBatchNorm(self.num_outputs).to(loader.device)] if self.tail_norm else []
        self.tail = nn.Sequential(*parts, nn.ReLU(), self._layer(self.num_outputs, self.embedding, g, loader.device))
        self.labels = loader.train_labels.to(loader.device)
        g = seeds.generator(loader.seed, f"{self.name}-bank")
        self.bank = F.normalize(torch.randn(len(self.labels), self.embedding, generator=g), dim=1).to(loader.device)

    def modules(self) -> list[nn.Module]:
        return [self._bound()]

    def _bound(self) -> nn.Module:
        if self.tail is None:
            raise RuntimeError(f"{self.name} has no projection tail: call bind(loader) with the training loader first")
        return self.tail

    def begin(self, model, mask, step: int, total: int) -> None:
        """Before the first step of a fit (no target here)."""

    def after_step(self, model, mask, step: int) -> None:
        """After every optimizer step (nothing here)."""

    def state_dict(self) -> dict:
        return {"tail": self._bound().state_dict(), "bank": self.bank}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise ValueError(f"this checkpoint holds no {self.name} state ({', '.join(missing)} missing): "
                             f"it was not written by a {self.name} run")
        if state["bank"].shape != self.bank.shape:
            raise ValueError(f"checkpointed kNN bank has shape {tuple(state['bank'].shape)}, "
                             f"this training set needs {tuple(self.bank.shape)}")
        self._bound().load_state_dict(state["tail"])
        self.bank.copy_(state["bank"])

    # ------------------------------------------------------------ views, embeddings, the bank

    def two(self, x: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        return two_views(*self.views, x, draws.uniform(f"{self.name}-views", 2 * DRAWS))

    def embed(self, outputs: torch.Tensor) -> torch.Tensor:
        """The unit-norm embedding of the network's outputs (through the tail)."""
        return F.normalize(self._bound()(outputs), dim=1)

    @torch.no_grad()
    def remember(self, z: torch.Tensor, index: torch.Tensor) -> None:
        """The bank rows of the global batch's images become their latest (unit) embeddings."""
        z, index = distributed.gather_batch(z.to(self.bank.dtype), index)
        self.bank.index_copy_(0, index, z)

    def score(self, outputs, index):
        if self._seen is None:
            raise RuntimeError(f"{self.name}.score reports the last loss() call's accuracy; call loss first")
        return self._seen

    def eval_prepare(self, x, y, draws=None):
        return x, y

    def metric(self):
        return _Monitor(self)


class _Monitor:
    """kNN top-1 of the tail's embeddings of the test images against the bank (NPID's kNN)."""

    def __init__(self, task: TwoViews):
        self.task = task
        self.knn = NearestNeighbours(_Bank(task))

    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        tail = self.task._bound()
        was = tail.training
        tail.eval()  # batch norm (BYOL's) with its running statistics, as the network itself
        try:
            z = self.task.embed(at_least_fp32(outputs))
        finally:
            tail.train(was)
        self.knn.add(z, targets)

    def result(self) -> dict:
        return self.knn.result()


class _Bank:
    """What NPID's NearestNeighbours reads of a task, for a two-view task's bank."""

    def __init__(self, task: TwoViews):
        self.labels, self.num_classes = task.labels, task.num_classes
        self.knn, self.temperature, self._task = task.knn, task.knn_temperature, task

    def _bound(self) -> torch.Tensor:
        return self._task.bank


class SimCLR(TwoViews):
    """Chen et al. 2020: NT-Xent over the 2N views of the global batch. Each view's positive is the
    other view of its image, its negatives the 2N - 2 other views of the *global* batch: under DDP
    the embeddings of every rank are gathered (gradients flow back to the rank that computed them)
    and put in one process's order [view 1 of every image; view 2 of every image], so 2 ranks
    compute what 1 does. Colour jitter at SimCLR's strength 1.0 x 0.8 (brightness, contrast,
    saturation 0.8), blur on both views with probability 0.5."""

    name = "simclr"
    jitter = 0.8

    def prepare(self, x, index, draws: Draws):
        v1, v2 = self.two(x, draws)
        return torch.cat([v1, v2]), index

    def loss(self, outputs, index):
        z = self.embed(outputs)  # this rank's [view 1; view 2], b images
        b = len(z) // 2
        gathered, start = distributed.gather_rows(z)  # rank after rank, each [view 1; view 2]
        world, rank = len(gathered) // len(z), start // len(z)
        every = gathered.view(world, 2, b, -1).transpose(0, 1).reshape(2 * world * b, -1)
        own = torch.arange(b, device=z.device) + rank * b
        mine = torch.cat([own, own + world * b])  # where this rank's rows are in `every`
        positive = torch.cat([own + world * b, own])
        logits = (z @ every.T) / self.temperature
        logits = logits.masked_fill(torch.arange(len(every), device=z.device).view(1, -1) == mine.view(-1, 1), -math.inf)
        loss = F.cross_entropy(logits, positive)
        self._seen = ((logits.detach().argmax(1) == positive).sum(), len(z))
        if torch.is_grad_enabled() and outputs.requires_grad:
            self.remember(z[:b].detach(), index)
        return loss
