"""Training objectives. A task turns a labelled batch into (inputs, targets) and owns the head size.

The training loop knows nothing about rotations or labels: a new objective is a new task.
A task's protocol (all but `prepare` and `loss` have defaults in `Labels`):

    num_outputs                  size of the head
    index_targets                True: training batches carry dataset indices instead of labels
    prepare(x, y, draws)         a training batch -> (inputs, targets); `draws` (seed.Draws) is where
                                 every random number a task needs comes from: seeded by the stage,
                                 the step and each image's global position, never the global RNG
    loss(outputs, targets)       scalar loss, computed in fp32 outside autocast; under DDP it is the
                                 local share of the global batch's loss (gradients are averaged over
                                 ranks), so 2 ranks train as 1 does
    score(outputs, targets)      (number correct as a tensor, count as an int or a tensor): the
                                 running training accuracy, no host sync
    eval_prepare(x, y, draws)    a test batch (always labels) -> (inputs, targets); default prepare
    metric()                     an accumulator over test batches: add(outputs, targets), result()
    state_dict() / load_state_dict(state)   state beyond the network (a memory bank), checkpointed
    bind(loader)                 called once the training loader exists (before any checkpoint is
                                 loaded): a task that needs the training set (its size, its labels
                                 `loader.train_labels`) takes it here
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from . import seed as seeds
from .seed import Draws

from ..core import voc
from ..core.errors import ConfigError
from ..core.schema import TaskConfig, TASKS


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
        correct, count, loss = _sum_over_ranks(self.correct, self.count, self.loss_sum)
        return {"accuracy": correct / count, "loss": loss / count, "count": int(count), "metric": self.name}


def _sum_over_ranks(*values) -> list[float]:
    """Sums of per-rank running totals over all ranks. A total that is still None (a rank whose
    share of a tiny test set was empty) counts as 0, and that rank still joins the collective."""
    device = next((v.device for v in values if v is not None), None) or _collective_device()
    stats = torch.stack([torch.zeros((), dtype=torch.float64, device=device) if v is None else v.double()
                         for v in values])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    return stats.tolist()


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
        everyone, offset = gather_rows(positive)
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
        device = self.anchors[0].device if self.anchors else _collective_device()
        anchors, positives = (_gather_rows(torch.cat(rows) if rows else torch.zeros(0, d, device=device))
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
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            world = torch.distributed.get_world_size()
            fs, ids = [torch.empty_like(f) for _ in range(world)], [torch.empty_like(index) for _ in range(world)]
            torch.distributed.all_gather(fs, f.contiguous())
            torch.distributed.all_gather(ids, index.contiguous())
            f, index = torch.cat(fs), torch.cat(ids)
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
        correct, count = _sum_over_ranks(self.correct, self.count)
        return {"accuracy": correct / count, "count": int(count), "metric": "knn_top1"}


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
        labelled, world = global_count((target[:, 1] >= 0).sum())
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
        kept, world = global_count(keep.sum())  # the global batch's kept entries (DDP: this rank's share)
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
        device = self.scores[0].device if self.scores else _collective_device()
        scores = torch.cat(self.scores) if self.scores else torch.zeros(0, c, device=device)
        targets = torch.cat(self.targets) if self.targets else torch.zeros(0, c, device=device)
        scores, targets = _gather_rows(scores), _gather_rows(targets)
        loss = float(self.task.loss(scores, targets))
        mean, aps = voc.mean_average_precision(scores.cpu().double().numpy(), targets.cpu().numpy())
        return {"accuracy": mean, "metric": "mAP", "count": len(targets), "loss": loss,
                "ap": dict(zip(self.task.classes, aps))}


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_count(count: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the sum of `count` over ranks, the number of ranks), without a host sync; a loss divides by
    the global count and multiplies by the rank count so DDP's gradient average is the global mean."""
    if not _distributed():
        return count, 1
    count = count.detach().clone()
    torch.distributed.all_reduce(count)
    return count, torch.distributed.get_world_size()


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-sized row blocks, differentiable: the gradient of a gathered row goes back
    to the rank that computed it (summed over ranks, as every rank's loss may use it)."""

    @staticmethod
    def forward(ctx, x):
        dist = torch.distributed
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the rows of every rank's equal-sized block, rank after rank; where this rank's rows start)."""
    if not _distributed():
        return x, 0
    return _GatherRows.apply(x), torch.distributed.get_rank() * len(x)


def _collective_device() -> torch.device:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The test rows of every rank in the test set's own order (the loaders give rank r the images
    r, r + world, r + 2 world, ...), so ties are broken as in one process; all_gather needs equal
    shapes: pad, then cut."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    n = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros(top, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    world = len(sizes)
    positions = torch.cat([r + world * torch.arange(int(s.item())) for r, s in enumerate(sizes)])
    rows = torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])
    return rows[torch.argsort(positions).to(rows.device)]


def labels(data):
    """The supervised task of a data set: its own labels (re-training, probes, fine-tuning)."""
    return make(TaskConfig("labels"), data)


def make(cfg: TaskConfig, data):
    """The task of a config on a data set (`data` is a dataset.MemoryData / FolderData)."""
    if cfg.name == "labels" and getattr(data, "multilabel", False):
        return MultiLabel(data.num_classes, getattr(data, "classes", ()))
    if cfg.name == "labels":
        return Labels(data.num_classes)
    if cfg.name == "rotnet":
        return RotNet()
    if cfg.name == "exemplar":
        return Exemplar(cfg, data.mean, data.std)
    if cfg.name == "npid":
        return NPID(cfg, data.num_classes)
    if cfg.name == "s4l":
        return S4L(data.num_classes, cfg.rotation_weight)
    raise ConfigError(f"task.name={cfg.name!r} is not one of {', '.join(TASKS)}")
