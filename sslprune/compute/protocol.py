"""What a network, a task and a data set must provide, as `typing.Protocol`s (docs/extending.md).

A config names its own with Hydra's `_target_` (`model: {_target_: my_lab.nets.build, depth: 26}`);
sslprune.compute.factory imports it and calls it with sslprune's own arguments plus the node's
other keys. The built-ins (sslprune.compute.model.BUILTIN, sslprune.compute.task.BUILTIN) are the
first implementations and are built through the same door. Nothing here is checked with
isinstance: the protocols are the written contract, the tests of examples/ exercise it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """What `model._target_` returns, called as `target(in_channels=..., **kwargs)` under a seeded RNG
    (sslprune.compute.model.build: every weight drawn from torch's global generator there is the
    run's, so draw them in __init__, never at import time).

    - `forward(x)`: images N x in_channels x H x W -> the penultimate features N x out_features: what
      the head, the linear probes and the SVMs read.
    - `out_features`: their size (an int).
    - `cuts` (optional): cut name -> module-name prefixes inside the backbone, input to output, for
      layerwise pruning (prune.scope=<cut>); without it only prune.scope=all works.

    Its prunable weights are the `weight` of every nn.Conv2d and nn.Linear inside it
    (sslprune.compute.model.weights), less the prefixes of prune.ignore; biases and normalisation
    layers are never pruned. sslprune adds the head (`Network.head`, a linear layer on the features,
    sized by the task, never pruned) and makes fresh heads itself (`Network.new_head`: seeded, for
    re-training on labels, probes and fine-tuning)."""

    out_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


class Network(Protocol):
    """The network every stage trains (sslprune.compute.model.Network wraps a Backbone in it)."""

    backbone: nn.Module  # ends in the penultimate features (probes and SVMs read them)
    head: nn.Linear  # parameter names "head.*": never pruned

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def new_head(self, num_outputs: int, generator: torch.Generator) -> None:
        """Replace the head with a fresh one drawn from `generator` alone."""


class Metric(Protocol):
    """An accumulator over test batches (a task's `metric()`)."""

    def add(self, outputs: torch.Tensor, targets: Any) -> None: ...

    def result(self) -> dict:
        """{"accuracy", "loss", "count", "metric"}, summed over ranks (classification.Accuracy)."""


@runtime_checkable
class Task(Protocol):
    """What `task._target_` returns, called as `target(data=..., **kwargs)`; `data` is the training
    data set (sslprune.compute.dataset.MemoryData or FolderData: num_classes, mean, std, channels).

    The training loop knows nothing of the objective: it asks the task for everything below.
    `state_dict` holds whatever the task keeps beyond the network (a memory bank, a queue, a target
    network): it is checkpointed with the weights and saved at the rewind point, so a resumed or
    rewound chain continues from the same state (the `task` entry of checkpoint.pt and rewind.pt).
    The random numbers a task draws come from `draws` (sslprune.compute.seed.Draws), seeded by the
    stage, the step and each image's position, never from the global RNG: that is what makes a
    resume after kill -9 and 2 ranks bit-identical to one uninterrupted process."""

    num_outputs: int  # size of the head
    index_targets: bool  # True: training batches carry data-set indices instead of labels

    def prepare(self, x: torch.Tensor, y: torch.Tensor, draws: Any) -> tuple[torch.Tensor, Any]:
        """A training batch -> (inputs, targets)."""

    def loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """Scalar loss in fp32; under DDP this rank's share of the global batch's loss."""

    def score(self, outputs: torch.Tensor, targets: Any) -> tuple[Any, Any]:
        """(number correct, count): the running training accuracy, without a host sync."""

    def eval_prepare(self, x: torch.Tensor, y: torch.Tensor, draws: Any) -> tuple[torch.Tensor, Any]:
        """A test batch (always labels) -> (inputs, targets)."""

    def metric(self) -> Metric: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...

    def bind(self, loader: Any) -> None:
        """Called once the training loader exists, before any checkpoint is loaded."""


class MomentumTask(Task, Protocol):
    """Optional members, used by the two-view tasks (SimCLR, MoCo v2, BYOL); a task without them
    behaves as if they returned nothing and did nothing."""

    def modules(self) -> list[nn.Module]:
        """Task-owned trainable modules (a predictor, a projection head that is not the network's
        head): their parameters are optimised beside the network's, never pruned, and are part of
        the task's state."""

    def begin(self, model: nn.Module, mask: Optional[Mapping], step: int, total: int) -> None:
        """Called once before a fit's first step, after any saved state was loaded and the mask
        applied: make the target from the (masked) network unless the state brought one; `total`
        is the number of steps the schedule spans (BYOL's momentum rises to 1 over it)."""

    def after_step(self, model: nn.Module, mask: Optional[Mapping], step: int) -> None:
        """Called once per optimizer step, after the mask is applied (a momentum / EMA update)."""


class DataSet(Protocol):
    """What `data._target_` returns, called as `target(**kwargs)`: a sslprune.compute.dataset.MemoryData,
    whose fields are

    - `train`, `test`: Split(images, labels): uint8 tensors N x C x H x W and int64 labels N
      (-1 = unlabelled); data.train_limit / test_limit keep the first N of each;
    - `num_classes`, `mean`, `std` (per channel, of images scaled to [0, 1]);
    - `pad` (pad-and-crop augmentation in pixels, 0 = none), `flip` (random horizontal flips).

    It is read whole into memory and augmented a batch at a time, as the small built-in sets are.
    It must return the same images in the same order every time (a resumed stage reads it again)."""

    name: str
    num_classes: int
    mean: tuple
    std: tuple
    pad: int
    flip: bool


Factory = Callable[..., Any]  # a class or function a `_target_` names
