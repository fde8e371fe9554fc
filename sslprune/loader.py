"""Batches for the training loop.

Every batch is a pure function of (seed, epoch, batch index): the shuffling order and the
augmentation draws come from generators seeded by those, so a resumed run sees exactly the
batches an uninterrupted one would. With several ranks, each rank takes its contiguous slice
of the same global batch, so the global batch does not depend on the number of ranks.
Evaluation splits the test set by rank with no padding, so every image is counted once.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.nn import functional as F

from . import seed as seeds
from .dataset import FolderData, MemoryData


class MemoryLoader:
    """A small data set held as a uint8 tensor on the device, augmented a batch at a time."""

    def __init__(self, data: MemoryData, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, channels_last: bool = False):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} ranks")
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.rank, self.world, self.channels_last = rank, world, channels_last
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
        x = (x.float() / 255 - self.mean) / self.std
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
            yield self._normalize(x), self.train_y[idx]

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


class _SeededFolder(torch.utils.data.Dataset):
    """ImageFolder whose random transforms draw from a seed carried with each index."""

    def __init__(self, folder, transform):
        self.folder, self.transform = folder, transform

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        index, sample_seed = item
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transform(image), label


class FolderLoader:
    """ImageNet-like trees: per-sample decoding and augmentation in DataLoader workers."""

    def __init__(self, data: FolderData, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, channels_last: bool = False):
        from torchvision import datasets, transforms as T

        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} ranks")
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world, self.channels_last, self.workers = rank, world, channels_last, data.workers
        norm = T.Normalize(data.mean, data.std)
        s = data.image_size
        train_t = T.Compose([T.RandomResizedCrop(s), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        test_t = T.Compose([T.Resize(int(round(s * 256 / 224))), T.CenterCrop(s), T.ToTensor(), norm])
        train = datasets.ImageFolder(str(data.train_dir))
        test = datasets.ImageFolder(str(data.test_dir))
        if data.train_limit:
            train.samples = train.samples[: data.train_limit]
        if data.test_limit:
            test.samples = test.samples[: data.test_limit]
        self.train, self.test = _SeededFolder(train, train_t), _SeededFolder(test, test_t)
        if len(train.samples) < batch_size:
            raise ValueError(f"{data.name} has {len(train.samples)} training images, fewer than one batch of {batch_size}")
        self.steps_per_epoch = len(train.samples) // batch_size

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
        for x, y in torch.utils.data.DataLoader(self.train, batch_sampler=plan, num_workers=self.workers,
                                                pin_memory=self.device.type == "cuda"):
            yield self._to(x, y)

    def eval_batches(self, batch_size: int):
        mine = list(range(self.rank, len(self.test), self.world))
        plan = [[(j, 0) for j in mine[i:i + batch_size]] for i in range(0, len(mine), batch_size)]
        for x, y in torch.utils.data.DataLoader(self.test, batch_sampler=plan, num_workers=self.workers,
                                                pin_memory=self.device.type == "cuda"):
            yield self._to(x, y)


def make(data, batch_size: int, seed: int, device: torch.device, rank: int = 0, world: int = 1,
         channels_last: bool = False):
    cls = MemoryLoader if isinstance(data, MemoryData) else FolderLoader
    return cls(data, batch_size, seed, device, rank, world, channels_last)
