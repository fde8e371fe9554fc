"""Batches for the training loop.

Every batch is a pure function of (seed, epoch, batch index): the shuffling order and the
augmentation draws come from generators seeded by those, so a resumed run sees exactly the
batches an uninterrupted one would. With several ranks, each rank takes its contiguous slice
of the same global batch, so the global batch does not depend on the number of ranks.
Evaluation splits the test set by rank with no padding, so every image is counted once
(both slicings are sslprune.compute.distributed's `share` and `test_share`).

With `index_targets`, training batches carry each image's index in the training set instead of
its label (NPID's memory bank is indexed by image); `train_labels` holds every training image's
label in that index order. Test batches always carry labels.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import queue
import threading
from typing import Iterator, Optional

import torch
from torch.nn import functional as F

from . import distributed, image, seed as seeds
from .dataset import FolderData, MemoryData
from ..core.errors import ConfigError, DataCorrupt, DataMissing
from ..core.schema import DECODES


class MemoryLoader:
    """A small data set held as a uint8 tensor on the device, augmented a batch at a time."""

    def __init__(self, data: MemoryData, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, channels_last: bool = False, index_targets: bool = False):
        distributed.check_divisible(batch_size, world)
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
        n, p = b * self.world, self.data.pad
        mine = distributed.share(0, n, self.rank, self.world)
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
        for i in range(start, self.steps_per_epoch):
            idx = order[distributed.share(i, self.batch_size, self.rank, self.world)]
            g = seeds.generator(self.seed, "augment", epoch, i, device=self.device)
            x = self.augment(self.train_x[idx], g)
            yield self._normalize(x), idx if self.index_targets else self.train_y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mine = distributed.test_share(self.rank, self.world)
        x, y = self.test_x[mine], self.test_y[mine]
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
    """ImageFolder samples made from a seed carried with each index: decoded and augmented here,
    in a DataLoader worker (`image.load`), or, for the device path, read for the device to decode
    (`image.read`). Evaluation samples ignore the seed (resize + centre crop)."""

    def __init__(self, samples, size: int, train: bool, on_device: bool, index_targets: bool = False):
        self.samples, self.size, self.train, self.on_device = samples, size, train, on_device
        self.index_targets = index_targets

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, sample_seed = item
        path, label = self.samples[index]
        if isinstance(label, tuple):  # a multi-label target (sslprune.voc): batches collate it into an N x C matrix
            label = torch.tensor(label, dtype=torch.float32)
        seed = sample_seed if self.train else None
        made = (image.read if self.on_device else image.load)(path, self.size, seed)
        return made, index if self.index_targets else label


def _read_batch(batch: list) -> tuple:
    """A worker's batch for the device path, in a few tensors (one shared-memory transfer each):
    the colour JPEGs' bytes end to end with their lengths and paths, the pixels of the other
    images, which positions are JPEGs, the boxes, the flips and the targets."""
    from torch.utils.data import default_collate

    reads, targets = zip(*batch)
    jpegs = [r for r in reads if r[1] is not None]
    return (torch.cat([r[1] for r in jpegs]) if jpegs else torch.empty(0, dtype=torch.uint8),
            torch.tensor([len(r[1]) for r in jpegs], dtype=torch.int64),
            [r[0] for r in jpegs],
            [r[2] for r in reads if r[2] is not None],
            torch.tensor([r[1] is not None for r in reads]),
            torch.tensor([r[3] for r in reads], dtype=torch.float32),
            torch.tensor([r[4] for r in reads]),
            default_collate(list(targets)))


_END = object()


def _ahead(source, make, device: torch.device, depth: int = 2):
    """make(batch) for each batch of `source`, computed up to `depth` batches ahead in a thread:
    on CUDA on a stream of its own, so decoding and augmenting the next batches overlaps the
    training step on this one. Batches come out in order; an error in the thread is raised here.

    Each result is a tuple of tensors; on CUDA the consumer's stream waits for the thread's work
    on it and the tensors are marked as used there, so the allocator does not reuse them early."""
    cuda = device.type == "cuda"
    # The current CUDA device is per thread: the new thread works on this thread's one.
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    stream = torch.cuda.Stream(index) if cuda else None
    results = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            with (torch.cuda.device(index) if cuda else contextlib.nullcontext()), \
                    (torch.cuda.stream(stream) if cuda else contextlib.nullcontext()):
                for batch in source:
                    out = make(batch)
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((out, event, None)):
                        return
                    if cuda:
                        # The rule: batch N's work on this stream is finished before batch N+1 is
                        # decoded. make() has returned, so the allocator already counts batch N's
                        # decoded images and scratch buffers as free on this stream while the
                        # kernels reading them may still be queued. A decoder working outside this
                        # stream's order (torchvision's nvJPEG path had a stream of its own,
                        # pytorch/vision PR 9606) could then write batch N+1 into blocks batch N
                        # is still reading. TorchCodec 0.17 asks torch for the current stream (this
                        # one); the wait keeps the rule whatever a decoder version does. It costs
                        # this thread, not the training step, which it runs `depth` batches ahead of.
                        event.synchronize()
            put((_END, None, None))
        except BaseException as e:  # handed to the consumer, which raises it
            put((None, None, e))

    thread = threading.Thread(target=work, name="sslprune-decode", daemon=True)
    thread.start()
    try:
        while True:
            out, event, error = results.get()
            if error is not None:
                raise error
            if out is _END:
                return
            if event is not None:
                here = torch.cuda.current_stream(index)
                here.wait_event(event)
                for t in out:
                    t.record_stream(here)
            yield out
    finally:  # also when the consumer stops early (an interrupted stage drops its batches)
        stop.set()
        thread.join()


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


def _own_message(e: Exception) -> str:
    """A worker's error as its own one line: torch re-raises it in this process with the worker's
    whole traceback as the message ("Caught DataCorrupt in DataLoader worker process 0. Original
    Traceback ..."), 18 lines for one damaged JPEG, the file named on the last."""
    text = str(e).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]  # "sslprune.core.errors.DataCorrupt: <the message>"
    return last.split(": ", 1)[1] if ": " in last else last


class FolderLoader:
    """ImageNet-like trees: decoded and augmented in the DataLoader workers (PIL, uint8), or with
    `FolderData.decode` "device" (the default on CUDA) a batch at a time where the batch is used,
    the workers only reading files (see sslprune.compute.image). Both paths draw the same crops
    and flips from the same per-sample seeds."""

    def __init__(self, data: FolderData, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, channels_last: bool = False, index_targets: bool = False):
        from torchvision.datasets.folder import find_classes

        distributed.check_divisible(batch_size, world)
        if data.decode not in DECODES:
            raise ValueError(f"data.decode={data.decode!r} is not one of {', '.join(DECODES)}")
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world, self.channels_last, self.workers = rank, world, channels_last, data.workers
        self.on_device = data.decode == "device" or (data.decode == "auto" and device.type == "cuda")
        self.size = data.image_size
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        # Both splits take their labels from train/'s classes, so a val/ lacking a class stays aligned.
        classes = tuple(data.classes) or tuple(find_classes(str(data.train_dir))[0])
        train = _labelled(folder_train(data), data)
        listed = data.test_samples if data.test_samples is not None else _scan(str(data.test_dir), classes, True)
        test = _balanced(list(listed), data.test_limit)
        if not test:
            raise DataMissing(f"{data.name}: no images under {data.test_dir}")
        self.train = _SeededFolder(train, self.size, True, self.on_device, index_targets)
        self.test = _SeededFolder(test, self.size, False, self.on_device)
        self.train_labels = torch.tensor([label for _, label in train], dtype=torch.int64)
        if len(train) < batch_size:  # check_inputs refuses a smaller tree before any work; a label subset can be
            raise ConfigError(f"{data.name} has {len(train)} training images, fewer than one batch of {batch_size}")
        self.steps_per_epoch = len(train) // batch_size
        self._loaders: dict = {}  # id(dataset) -> (its plan, its DataLoader), see _loader

    def batches(self, epoch: int, start: int = 0):
        order = torch.randperm(len(self.train), generator=seeds.generator(self.seed, "order", epoch)).tolist()
        plan = []
        for i in range(start, self.steps_per_epoch):
            mine = order[distributed.share(i, self.batch_size, self.rank, self.world)]
            plan.append([(j, seeds.derive(self.seed, "augment", epoch, j)) for j in mine])
        return self._batches(self.train, plan)

    def eval_batches(self, batch_size: int):
        mine = list(range(len(self.test))[distributed.test_share(self.rank, self.world)])
        plan = [[(j, 0) for j in mine[i:i + batch_size]] for i in range(0, len(mine), batch_size)]
        return self._batches(self.test, plan)

    def _batches(self, dataset, plan):
        loader = self._loader(dataset, plan)
        try:
            if self.on_device:
                yield from _ahead(loader, self._made_here, self.device)
            else:
                for x, y in loader:
                    x = image.normalize(x.to(self.device, non_blocking=True), self.mean, self.std, self.channels_last)
                    yield x, y.to(self.device, non_blocking=True)
        except (DataCorrupt, DataMissing) as e:
            raise type(e)(_own_message(e)) from None

    def _made_here(self, batch) -> tuple:
        """A batch of bytes (and of pixels the workers decoded) decoded, cropped, resized, flipped
        and normalised on this loader's device."""
        data, lengths, names, pixels, is_jpeg, boxes, flips, targets = batch
        decoded = iter(image.decode(data.split(lengths.tolist()), self.device, names))
        others = iter(pixels)
        images = [next(decoded) if j else next(others).to(self.device, non_blocking=True) for j in is_jpeg.tolist()]
        x = image.resample(images, boxes, flips, self.size)
        return image.normalize(x, self.mean, self.std, self.channels_last), targets.to(self.device, non_blocking=True)

    def _loader(self, dataset, plan):
        """The DataLoader of `dataset`, built at its first pass and kept for the stage: its worker
        processes persist between epochs and evaluations (starting them took seconds per epoch on
        ImageNet). Each pass hands it its own plan, so a batch stays a function of (seed, epoch, index)."""
        made = self._loaders
        if id(dataset) not in made:
            plan_now = _Plan()
            # A private generator for the DataLoader's base seed: iterating must not draw from (and so
            # shift) the caller's global RNG. Worker seeds do not matter, every sample carries its own.
            made[id(dataset)] = plan_now, torch.utils.data.DataLoader(
                dataset, batch_sampler=plan_now, num_workers=self.workers, persistent_workers=self.workers > 0,
                collate_fn=_read_batch if self.on_device else None,
                pin_memory=self.device.type == "cuda" and not self.on_device, generator=torch.Generator())
        plan_now, loader = made[id(dataset)]
        plan_now.batches = plan  # read when the pass starts (the loop starts one pass at a time)
        return loader


class _Plan(torch.utils.data.Sampler):
    """The batches (lists of (index, seed)) of a loader's current pass."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


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
