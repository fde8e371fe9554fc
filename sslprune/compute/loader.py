"""Batches for the training loop.

Every batch is a pure function of (seed, epoch, batch index): the shuffling order and the
augmentation draws come from generators seeded by those, so a resumed run sees exactly the
batches an uninterrupted one would. With several ranks, each rank takes its contiguous slice
of the same global batch, so the global batch does not depend on the number of ranks.
Evaluation splits the test set by rank with no padding, so every image is counted once.

With `index_targets`, training batches carry each image's index in the training set instead of
its label (NPID's memory bank is indexed by image); `train_labels` holds every training image's
label in that index order. Test batches always carry labels.
"""
from __future__ import annotations

import collections
import functools
from typing import Iterator, Optional

import torch
from torch.nn import functional as F

from . import seed as seeds
from .dataset import DataMissing, FolderData, MemoryData


class MemoryLoader:
    """A small data set held as a uint8 tensor on the device, augmented a batch at a time."""

    def __init__(self, data: MemoryData, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, channels_last: bool = False, index_targets: bool = False):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} ranks")
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.rank, self.world, self.channels_last, self.index_targets = rank, world, channels_last, index_targets
        self.train_labels = data.train.labels.cpu()
        self.train_x = data.train.images.to(device)
        self.train_y = data.train.labels.to(device)
        self.test_x = data.test.images.to(device)
        self.test_y = data.test.labels.to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        n = len(self.train_y)
        if n < batch_size:
            raise ValueError(f"{data.name} has {n} training images, fewer than one batch of {batch_size}")
        self.steps_per_epoch = n // batch_size  # drop the last partial batch: fixed shapes, exact epochs

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        # The default dtype: float32, or float64 in the tests that check the arithmetic exactly.
        x = (x.to(torch.get_default_dtype()) / 255 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Pad-and-crop plus horizontal flip for a whole batch, one draw per image.

        Draws are made for the global batch and this rank keeps its slice, so the images a
        rank sees are the same ones a single process would see at that position."""
        b, _, h, w = x.shape
        mine = slice(self.rank * b, (self.rank + 1) * b)
        n, p = b * self.world, self.data.pad
        if p:
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g, device=x.device)[mine]
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g, device=x.device)[mine]
            x = crop(F.pad(x, (p, p, p, p)), dy, dx, h, w)
        if self.data.flip:
            flip = (torch.rand(n, generator=g, device=x.device) < 0.5)[mine]
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
        return x

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.train_y), generator=seeds.generator(self.seed, "order", epoch),
                               device="cpu").to(self.device)
        per_rank = self.batch_size // self.world
        for i in range(start, self.steps_per_epoch):
            idx = order[i * self.batch_size + self.rank * per_rank: i * self.batch_size + (self.rank + 1) * per_rank]
            g = seeds.generator(self.seed, "augment", epoch, i, device=self.device)
            x = self.augment(self.train_x[idx], g)
            yield self._normalize(x), idx if self.index_targets else self.train_y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.test_x[self.rank::self.world], self.test_y[self.rank::self.world]
        for i in range(0, len(y), batch_size):
            yield self._normalize(x[i:i + batch_size]), y[i:i + batch_size]


def crop(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-image crop of an h x w window at offsets (dy, dx) from a padded batch."""
    b, c = padded.shape[:2]
    rows = (dy.view(b, 1) + torch.arange(h, device=padded.device)).view(b, 1, h, 1).expand(b, c, h, padded.shape[3])
    x = padded.gather(2, rows)
    cols = (dx.view(b, 1) + torch.arange(w, device=padded.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return x.gather(3, cols)


def _balanced(samples: list, n: Optional[int]) -> list:
    """The first n samples taking the classes in turn (class 0's first image, class 1's first, ...),
    in their original order. ImageFolder lists samples class by class, so a plain prefix of a
    quick run's `train_limit` would hold the first class only."""
    if not n or n >= len(samples):
        return list(samples)
    if isinstance(samples[0][1], tuple):  # multi-label (VOC07): no single class to take turns by, and
        return list(samples[:n])  # its image lists are not sorted by class, so a prefix is a fair sample
    rank = collections.Counter()
    keyed = []
    for i, (_, label) in enumerate(samples):
        keyed.append((rank[label], label, i))
        rank[label] += 1
    keep = sorted(i for _, _, i in sorted(keyed)[:n])
    return [samples[i] for i in keep]


@functools.lru_cache(maxsize=8)
def _scan(directory: str, classes: tuple, allow_empty: bool) -> tuple:
    """(path, label) of every image under directory/<class>/, labels from `classes` (train/'s list).

    Cached per process: every stage builds a loader, and listing ImageNet's train/ takes a while."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        return tuple(make_dataset(directory, {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS,
                                  allow_empty=allow_empty))
    except FileNotFoundError as e:
        raise DataMissing(f"{directory}: {e}") from None


class _SeededFolder(torch.utils.data.Dataset):
    """ImageFolder samples whose random transforms draw from a seed carried with each index."""

    def __init__(self, samples, transform, index_targets: bool = False):
        self.samples, self.transform, self.index_targets = samples, transform, index_targets

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        from torchvision.datasets.folder import default_loader

        index, sample_seed = item
        path, label = self.samples[index]
        if isinstance(label, tuple):  # a multi-label target (sslprune.voc): batches collate it into an N x C matrix
            label = torch.tensor(label, dtype=torch.float32)
        image = default_loader(path)
        # The transforms draw from torch's default CPU generator: seed that one alone and put it
        # back afterwards, leaving the caller's random state (CPU and CUDA) as it was.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)
            return self.transform(image), index if self.index_targets else label


def folder_train(data: FolderData) -> list:
    """(path, label) of the training images a FolderData uses, before any label subset: the scan
    of train/ cut to `train_limit`. Label subsets are indices into this list."""
    from torchvision.datasets.folder import find_classes

    if data.train_samples is not None:  # listed by the data set's own split files
        return _balanced(list(data.train_samples), data.train_limit)
    classes = tuple(data.classes) or tuple(find_classes(str(data.train_dir))[0])
    return _balanced(list(_scan(str(data.train_dir), classes, False)), data.train_limit)


def _labelled(samples: list, data: FolderData) -> list:
    """A FolderData's label subset applied to its scanned training list."""
    if data.labelled is None:
        return samples
    keep = set(data.labelled)
    if data.unlabelled_kept:
        return [(path, label if i in keep else -1) for i, (path, label) in enumerate(samples)]
    return [samples[i] for i in sorted(keep)]


class FolderLoader:
    """ImageNet-like trees: per-sample decoding and augmentation in DataLoader workers."""

    def __init__(self, data: FolderData, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, channels_last: bool = False, index_targets: bool = False):
        from torchvision import transforms as T
        from torchvision.datasets.folder import find_classes

        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} ranks")
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world, self.channels_last, self.workers = rank, world, channels_last, data.workers
        norm = T.Normalize(data.mean, data.std)
        s = data.image_size
        train_t = T.Compose([T.RandomResizedCrop(s), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        test_t = T.Compose([T.Resize(int(round(s * 256 / 224))), T.CenterCrop(s), T.ToTensor(), norm])
        # Both splits take their labels from train/'s classes, so a val/ lacking a class stays aligned.
        classes = tuple(data.classes) or tuple(find_classes(str(data.train_dir))[0])
        train = _labelled(folder_train(data), data)
        listed = data.test_samples if data.test_samples is not None else _scan(str(data.test_dir), classes, True)
        test = _balanced(list(listed), data.test_limit)
        if not test:
            raise DataMissing(f"{data.name}: no images under {data.test_dir}")
        self.train, self.test = _SeededFolder(train, train_t, index_targets), _SeededFolder(test, test_t)
        self.train_labels = torch.tensor([label for _, label in train], dtype=torch.int64)
        if len(train) < batch_size:
            raise ValueError(f"{data.name} has {len(train)} training images, fewer than one batch of {batch_size}")
        self.steps_per_epoch = len(train) // batch_size

    def _to(self, x, y):
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def batches(self, epoch: int, start: int = 0):
        order = torch.randperm(len(self.train), generator=seeds.generator(self.seed, "order", epoch)).tolist()
        per_rank = self.batch_size // self.world
        plan = []
        for i in range(start, self.steps_per_epoch):
            lo = i * self.batch_size + self.rank * per_rank
            plan.append([(j, seeds.derive(self.seed, "augment", epoch, j)) for j in order[lo:lo + per_rank]])
        for x, y in self._loader(self.train, plan):
            yield self._to(x, y)

    def eval_batches(self, batch_size: int):
        mine = list(range(self.rank, len(self.test), self.world))
        plan = [[(j, 0) for j in mine[i:i + batch_size]] for i in range(0, len(mine), batch_size)]
        for x, y in self._loader(self.test, plan):
            yield self._to(x, y)

    def _loader(self, dataset, plan):
        # A private generator for the DataLoader's base seed: iterating must not draw from (and so
        # shift) the caller's global RNG. Worker seeds do not matter, every sample carries its own.
        return torch.utils.data.DataLoader(dataset, batch_sampler=plan, num_workers=self.workers,
                                           pin_memory=self.device.type == "cuda", generator=torch.Generator())


def make(data, batch_size: int, seed: int, device: torch.device, rank: int = 0, world: int = 1,
         channels_last: bool = False, index_targets: bool = False):
    cls = MemoryLoader if isinstance(data, MemoryData) else FolderLoader
    return cls(data, batch_size, seed, device, rank, world, channels_last, index_targets)


def train_labels(data) -> torch.Tensor:
    """Every training image's label (CPU int64, index order) before any label subset, without
    building a loader: what a label subset is drawn from."""
    if isinstance(data, MemoryData):
        return data.train.labels.cpu()
    return torch.tensor([label for _, label in folder_train(data)], dtype=torch.int64)
