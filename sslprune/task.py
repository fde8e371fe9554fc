"""Training objectives. A task turns a labelled batch into (inputs, targets) and owns the head size.

The training loop knows nothing about rotations or labels: a new objective is a new task.
A task's protocol (all but `prepare` and `loss` have defaults in `Labels`):

    num_outputs                  size of the head
    index_targets                True: training batches carry dataset indices instead of labels
    prepare(x, y)                a training batch -> (inputs, targets)
    loss(outputs, targets)       scalar loss
    score(outputs, targets)      (number correct as a tensor, count): the running training accuracy
    eval_prepare(x, y)           a test batch (always labels) -> (inputs, targets); default prepare
    metric()                     an accumulator over test batches: add(outputs, targets), result()
    state_dict() / load_state_dict(state)   state beyond the network (a memory bank), checkpointed
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .config import TaskConfig, ConfigError, TASKS


class Accuracy:
    """Top-1 accuracy and mean loss of a task over test batches, summed over ranks."""

    def __init__(self, task):
        self.task = task
        self.correct = self.count = self.loss_sum = None

    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        correct, n = self.task.score(outputs, targets)
        loss = self.task.loss(outputs, targets).detach() * n
        if self.correct is None:
            self.correct, self.loss_sum = torch.zeros_like(correct, dtype=torch.float64), torch.zeros_like(
                loss, dtype=torch.float64)
            self.count = torch.zeros((), dtype=torch.float64, device=correct.device)
        self.correct += correct
        self.count += n
        self.loss_sum += loss

    def result(self) -> dict:
        stats = torch.stack([self.correct, self.count, self.loss_sum])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        correct, count, loss = stats.tolist()
        return {"accuracy": correct / count, "loss": loss / count, "count": int(count), "metric": "top1"}


class Labels:
    """Supervised classification on the data set's own labels."""

    name = "labels"
    index_targets = False

    def __init__(self, num_classes: int):
        self.num_outputs = num_classes

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def score(self, outputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (outputs.argmax(1) == target).sum(), len(target)

    def eval_prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prepare(x, y)

    def metric(self):
        return Accuracy(self)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


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


def labels(data):
    """The supervised task of a data set: its own labels (re-training, probes, fine-tuning)."""
    return make(TaskConfig("labels"), data)


def make(cfg: TaskConfig, data):
    """The task of a config on a data set (`data` is a dataset.MemoryData / FolderData)."""
    if cfg.name not in TASKS:
        raise ConfigError(f"task.name={cfg.name!r} is not one of {', '.join(TASKS)}")
    if cfg.name == "labels":
        return Labels(data.num_classes)
    if cfg.name == "rotnet":
        return RotNet()
    raise ConfigError(f"task {cfg.name!r} is not implemented yet")
