"""NPID: non-parametric instance discrimination against a memory bank, evaluated by weighted kNN."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from . import distributed, seed as seeds
from .classification import Labels, at_least_fp32
from .seed import Draws

from ..core.schema import TaskConfig


class NPID(Labels):
    """Wu et al. 2018, non-parametric instance discrimination: each image is a class whose weight
    vector is a memory-bank row, the running average of that image's past embeddings.

    Loss: softmax cross-entropy at temperature T over the image's own bank row (the positive) and
    `negatives` bank rows drawn per step without replacement (the same draw for the whole batch,
    so memory stays K x D; at most N - 1 of them, and a drawn row that is the image's own is left
    out of its softmax). After the loss, the rows of the batch become
    v_i <- normalize(m v_i + (1 - m) f_i). Training batches carry image indices (`index_targets`);
    under torch.distributed the features and indices of every rank are gathered first, so each
    rank applies the same update and the banks stay identical. Evaluation: weighted kNN over the
    bank with the training labels (Wu et al.: k = 200, weights exp(cos / T))."""

    name = "npid"
    index_targets = True
    knn = 200

    def __init__(self, cfg: TaskConfig, num_classes: int):
        self.num_outputs, self.num_classes = cfg.embedding, num_classes
        self.temperature, self.momentum, self.negatives = cfg.temperature, cfg.bank_momentum, cfg.negatives
        self.bank = self.labels = None
        self._seen = self._negatives = None

    def bind(self, loader) -> None:
        """A bank row per training image, random unit vectors drawn from the loader's seed."""
        self.labels = loader.train_labels.to(loader.device)
        g = seeds.generator(loader.seed, "npid-bank")
        self.bank = F.normalize(torch.randn(len(self.labels), self.num_outputs, generator=g), dim=1).to(loader.device)

    def _bound(self) -> torch.Tensor:
        if self.bank is None:
            raise RuntimeError("NPID has no memory bank: call bind(loader) with the training loader first")
        return self.bank

    def prepare(self, x, index, draws: Draws):
        """The batch as it is (targets: image indices); the step's negatives are drawn here, one
        draw for the whole global batch (the same on every rank)."""
        bank = self._bound()
        n = len(bank)
        self._negatives = torch.randperm(n, generator=draws.generator("npid-negatives"),
                                         device=draws.device)[:min(self.negatives, n - 1)].to(bank.device)
        return x, index

    def loss(self, outputs, index):
        bank = self._bound()
        f = F.normalize(outputs, dim=1)
        if self._negatives is None:
            raise RuntimeError("NPID.loss uses the negatives its prepare() drew: call prepare first")
        drawn = self._negatives
        positive = (f * bank[index]).sum(1, keepdim=True)
        negative = (f @ bank[drawn].T).masked_fill(drawn.view(1, -1) == index.view(-1, 1), -math.inf)
        logits = torch.cat([positive, negative], 1) / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(len(f), dtype=torch.long, device=f.device))
        # The positive beats every drawn negative: the running training accuracy `score` reports.
        self._seen = ((logits.detach().argmax(1) == 0).sum(), len(f))
        if torch.is_grad_enabled() and outputs.requires_grad:  # a training step; evaluation leaves the bank alone
            self.update(f.detach(), index)
        return loss

    @torch.no_grad()
    def update(self, f: torch.Tensor, index: torch.Tensor) -> None:
        """v_i <- normalize(m v_i + (1 - m) f_i) for the batch of every rank (f already unit norm)."""
        bank = self._bound()
        f = f.to(bank.dtype)
        f, index = distributed.gather_batch(f, index)
        mixed = self.momentum * bank[index] + (1 - self.momentum) * f
        bank.index_copy_(0, index, F.normalize(mixed, dim=1))

    def score(self, outputs, index):
        if self._seen is None:
            raise RuntimeError("NPID.score reports the last loss() call's accuracy; call loss first")
        return self._seen

    def eval_prepare(self, x, y, draws=None):
        return x, y

    def metric(self):
        return NearestNeighbours(self)

    def state_dict(self) -> dict:
        return {"bank": self._bound()}

    def load_state_dict(self, state: dict) -> None:
        if "bank" not in state:
            raise ValueError("this checkpoint holds no NPID memory bank: it was not written by an NPID run")
        bank = self._bound()
        if state["bank"].shape != bank.shape:
            raise ValueError(f"checkpointed memory bank has shape {tuple(state['bank'].shape)}, "
                             f"this training set needs {tuple(bank.shape)}")
        bank.copy_(state["bank"])


class NearestNeighbours:
    """NPID's evaluation: weighted kNN over the memory bank, top-1 on the test labels, summed over ranks."""

    chunk = 256  # test images per similarity matrix (chunk x N): bounded memory on ImageNet's bank

    def __init__(self, task: NPID):
        self.task = task
        self.correct = self.count = None

    @torch.no_grad()
    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        t = self.task
        bank, labels = t._bound(), t.labels
        k = min(t.knn, len(bank))
        f = F.normalize(at_least_fp32(outputs), dim=1)
        if self.correct is None:
            self.correct = torch.zeros((), dtype=torch.float64, device=f.device)
            self.count = torch.zeros((), dtype=torch.float64, device=f.device)
        for q, y in zip(f.split(self.chunk), targets.split(self.chunk)):
            sim, at = (q @ bank.T).topk(k, dim=1)
            votes = torch.zeros(len(q), t.num_classes, device=f.device)
            votes.scatter_add_(1, labels[at], (sim / t.temperature).exp())
            self.correct += (votes.argmax(1) == y).sum()
            self.count += len(y)

    def result(self) -> dict:
        correct, count = distributed.sum_over_ranks(self.correct, self.count)
        return {"accuracy": correct / count, "count": int(count), "metric": "knn_top1"}
