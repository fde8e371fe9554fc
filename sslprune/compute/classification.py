"""Classification on a data set's own labels: the task every other task builds on (`Labels`, whose
defaults make up most of the task protocol, see sslprune.compute.task), its multi-label form
(VOC07), and their test metrics, summed or gathered over ranks."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from . import distributed

from ..core import voc
from .seed import Draws


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 outputs (autocast) as fp32; fp32 and fp64 as they are (losses and metrics never
    run in reduced precision, and a float64 run, used to check the arithmetic, stays float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Accuracy:
    """Top-1 accuracy and mean loss of a task over test batches, summed over ranks."""

    def __init__(self, task, name: str = "top1"):
        self.task, self.name = task, name
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
        correct, count, loss = distributed.sum_over_ranks(self.correct, self.count, self.loss_sum)
        return {"accuracy": correct / count, "loss": loss / count, "count": int(count), "metric": self.name}


class Labels:
    """Supervised classification on the data set's own labels."""

    name = "labels"
    index_targets = False

    def __init__(self, num_classes: int):
        self.num_outputs = num_classes

    def prepare(self, x: torch.Tensor, y: torch.Tensor, draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def score(self, outputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (outputs.argmax(1) == target).sum(), len(target)

    def eval_prepare(self, x: torch.Tensor, y: torch.Tensor, draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prepare(x, y, draws)

    def metric(self):
        return Accuracy(self)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def bind(self, loader) -> None:
        pass


class MultiLabel(Labels):
    """Several labels per image (VOC07): one binary decision per class.

    Targets are N x C with 1 (present), 0 (absent) and -1 (difficult only: ignored, as the VOC
    devkit does). The loss is binary cross-entropy on the logits, averaged over the entries that
    are not ignored; the test metric is the VOC07 mean average precision (sslprune.voc)."""

    name = "multilabel"

    def __init__(self, num_classes: int, classes: tuple = ()):
        self.num_outputs = num_classes
        self.classes = tuple(classes) or tuple(str(i) for i in range(num_classes))

    def loss(self, logits, target):
        keep = (target != -1).float()
        total = F.binary_cross_entropy_with_logits(logits, (target > 0).float(), weight=keep, reduction="sum")
        kept, world = distributed.global_count(keep.sum())  # the global batch's kept entries (DDP: this rank's share)
        return total * world / kept.clamp(min=1)

    def score(self, outputs, target):
        """Correct sign decisions (logit > 0 exactly when present) among the entries not ignored.

        The count stays a tensor (no host sync per step), so the running accuracy is the fraction
        over kept entries, not diluted by the ignored ones."""
        keep = target != -1
        return (((outputs > 0) == (target > 0)) & keep).sum(), keep.sum()

    def metric(self):
        return MeanAP(self)


class MeanAP:
    """VOC07 mean average precision and mean loss of a MultiLabel task over the whole test set.

    AP ranks the whole test set, so sums over ranks cannot make it: every rank's scores and
    targets are gathered (ranks hold different numbers of images) before computing it."""

    def __init__(self, task: MultiLabel):
        self.task, self.scores, self.targets = task, [], []

    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(at_least_fp32(outputs.detach()))
        self.targets.append(at_least_fp32(targets.detach()))

    def result(self) -> dict:
        c = self.task.num_outputs
        device = self.scores[0].device if self.scores else distributed.collective_device()
        scores = torch.cat(self.scores) if self.scores else torch.zeros(0, c, device=device)
        targets = torch.cat(self.targets) if self.targets else torch.zeros(0, c, device=device)
        scores, targets = distributed.gather_test_rows(scores), distributed.gather_test_rows(targets)
        loss = float(self.task.loss(scores, targets))
        mean, aps = voc.mean_average_precision(scores.cpu().double().numpy(), targets.cpu().numpy())
        return {"accuracy": mean, "metric": "mAP", "count": len(targets), "loss": loss,
                "ap": dict(zip(self.task.classes, aps))}
