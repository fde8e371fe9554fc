"""Linear probes on standardised frozen features (probe.features=standardised).

The features of the un-augmented images of both splits are computed once with the frozen
backbone in eval mode (as for the SVMs), each dimension is standardised with the training split's
mean and standard deviation, and the linear head is trained on them by the usual loop with the
probe's SGD schedule. That is a convex problem: with standardised inputs an SGD schedule of a
few thousand updates reaches the optimum that a full-batch solver finds, so the probe measures
the features rather than its optimiser. `Features.reference` is that solver: scikit-learn's
L-BFGS logistic regression on the same features with the same L2 penalty (C = 1 / (N x weight
decay)), recorded next to the probe's own accuracy in result.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from . import distributed, features, seed as seeds
from .model import seeded_linear


class Linear(nn.Module):
    """The probe's linear head alone: its inputs are the standardised features."""

    def __init__(self, dim: int, num_outputs: int, generator: torch.Generator):
        super().__init__()
        self.head = seeded_linear(dim, num_outputs, generator)  # as Network.new_head, from the stage's generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


@dataclass
class Features:
    train_x: torch.Tensor  # standardised, float64, CPU
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def dim(self) -> int:
        return self.train_x.shape[1]

    def loader(self, batch_size: int, seed: int, device: torch.device, rank: int = 0, world: int = 1):
        return FeatureLoader(self, batch_size, seed, device, rank, world)

    def reference(self, weight_decay: float) -> Optional[dict]:
        """Test accuracy of a full-batch L-BFGS multinomial logistic regression on these features,
        with the probe's L2 penalty; None for multi-label targets (no single-label reference)."""
        if self.train_y.dim() != 1:
            return None
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        n = len(self.train_y)
        c = 1.0 / (n * weight_decay) if weight_decay > 0 else None  # None: no penalty (C=inf)
        clf = LogisticRegression(solver="lbfgs", max_iter=10000, tol=1e-8, C=np.inf if c is None else c)
        # The BLAS threads of the stage's own count: their summation order changes L-BFGS's path.
        with threadpool_limits(torch.get_num_threads()):
            clf.fit(self.train_x.numpy(), self.train_y.numpy())
        accuracy = float((clf.predict(self.test_x.numpy()) == self.test_y.numpy()).mean())
        return {"lbfgs_accuracy": accuracy, "lbfgs_iterations": int(np.max(clf.n_iter_)),
                "lbfgs_C": c}


def standardised(backbone: nn.Module, data, device: torch.device, batch_size: int) -> Features:
    """Both splits' frozen features (float64), standardised with the training split's statistics
    (sslprune.compute.features)."""
    train_x, train_y = features.extract(backbone, data, "train", device, batch_size)
    test_x, test_y = features.extract(backbone, data, "test", device, batch_size)
    train_x, test_x = features.standardise(train_x, test_x)
    return Features(train_x, train_y, test_x, test_y)


class FeatureLoader:
    """Batches of standardised features, in the loop's loader protocol: a batch is a pure function
    of (seed, epoch, index), each rank takes its slice of the global batch, evaluation splits the
    test set by rank with no padding (as MemoryLoader). No augmentation: the features are fixed."""

    channels_last = False
    index_targets = False

    def __init__(self, features: Features, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1):
        distributed.check_divisible(batch_size, world)
        n = len(features.train_y)
        if n < batch_size:
            raise ValueError(f"{n} training images, fewer than one batch of {batch_size}")
        dtype = torch.get_default_dtype()
        self.train_x, self.train_y = features.train_x.to(device, dtype), features.train_y.to(device)
        self.test_x, self.test_y = features.test_x.to(device, dtype), features.test_y.to(device)
        self.batch_size, self.seed, self.device, self.rank, self.world = batch_size, seed, device, rank, world
        self.steps_per_epoch = n // batch_size

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.train_y), generator=seeds.generator(self.seed, "order", epoch)).to(self.device)
        for i in range(start, self.steps_per_epoch):
            idx = order[distributed.share(i, self.batch_size, self.rank, self.world)]
            yield self.train_x[idx], self.train_y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mine = distributed.test_share(self.rank, self.world)
        x, y = self.test_x[mine], self.test_y[mine]
        for i in range(0, len(y), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
