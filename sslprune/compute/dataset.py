"""Data sets in their standard on-disk layouts.

Small data sets (digits, Fashion-MNIST, CIFAR-10) are read whole into uint8 tensors so the
loader can keep them on the accelerator and augment a batch at once. ImageNet-like data sets
(ImageNet, Places205, VOC07) stay files on disk read by a DataLoader: ImageFolder trees, or
explicit (path, target) lists read from the data set's own split files (Places205's official
CSV lists, VOC07's ImageSets and Annotations, sslprune.voc).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..core import catalog, voc
from ..core.catalog import NUM_CLASSES, root_of
from ..core.errors import ConfigError, DataCorrupt
from ..core.schema import DataConfig
from . import factory


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N; -1 = unlabelled (outside S4L's label subset)


@dataclass
class MemoryData:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple
    std: tuple
    pad: int  # pad-and-crop augmentation; 0 = none
    flip: bool

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]


@dataclass
class FolderData:
    name: str
    train_dir: Path
    test_dir: Path
    num_classes: int
    image_size: int
    train_limit: Optional[int]
    test_limit: Optional[int]
    workers: int
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    channels: int = 3
    classes: tuple = ()  # train/'s class folder names; a class's label is its index here, in both splits
    # Label subset (sslprune.subset), applied by the loader to its scanned training list (only the
    # scan knows the labels): the indices whose labels are used, None = all; the other images are
    # dropped, or kept with label -1 when `unlabelled_kept` (S4L).
    labelled: Optional[tuple] = None
    unlabelled_kept: bool = False
    # Data sets whose split files list their images: ((path, target), ...) per split, used instead
    # of scanning train_dir / test_dir. A target is an int label, or a tuple of per-class values
    # when `multilabel` (VOC07: 1 present, 0 absent, -1 difficult only, see sslprune.voc).
    train_samples: Optional[tuple] = None
    test_samples: Optional[tuple] = None
    multilabel: bool = False
    decode: str = "auto"  # DataConfig.decode: where the loader decodes and augments


def input_size(data) -> tuple:
    """(channels, height, width) of one image as the network sees it at test time."""
    if isinstance(data, MemoryData):
        return tuple(data.test.images.shape[1:])
    return (data.channels, data.image_size, data.image_size)


def _limit(split: Split, n: Optional[int]) -> Split:
    return split if n is None else Split(split.images[:n], split.labels[:n])


def digits() -> tuple[Split, Split]:
    """scikit-learn's handwritten digits (8x8, 17 grey levels); a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(labels)))
    n_train = int(round(0.8 * len(labels)))
    tr, te = order[:n_train], order[n_train:]
    return Split(images[tr], labels[tr]), Split(images[te], labels[te])


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST family), gzip-compressed or not, checked against its header."""
    data = catalog.idx_bytes(path)
    shape = catalog.idx_shape(path, data)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(shape)).reshape(shape)


def fashion_mnist(root: Path) -> tuple[Split, Split]:
    catalog.fashion_mnist_counts(root)  # every file whole, images and labels counted alike
    splits = []
    for prefix in ("train", "t10k"):
        img = catalog.find_idx(root, f"{prefix}-images-idx3-ubyte")
        lab = catalog.find_idx(root, f"{prefix}-labels-idx1-ubyte")
        images = torch.from_numpy(read_idx(img).copy())[:, None]
        splits.append(Split(images, torch.from_numpy(read_idx(lab).astype(np.int64))))
    return splits[0], splits[1]


def cifar10(root: Path) -> tuple[Split, Split]:
    base = catalog.cifar10_base(root)
    names = catalog.CIFAR10_FILES[:5]

    def read(files):
        xs, ys = [], []
        for n in files:
            d = catalog.cifar10_batch(base / n)  # no code runs from it; a damaged file is named
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))

    return read(names), read(["test_batch"])


def _places205(cfg: DataConfig, root: Path) -> FolderData:
    train_list, val_list, images = catalog.places205_files(root)
    train, test, classes = catalog.places205_samples(train_list, val_list, images)
    return FolderData(cfg.name, images, images, len(classes), cfg.image_size, cfg.train_limit, cfg.test_limit,
                      cfg.workers, classes=classes, train_samples=train, test_samples=test, decode=cfg.decode)


def _voc07(cfg: DataConfig, root: Path) -> FolderData:
    b = voc.check(root)
    return FolderData(cfg.name, b / "JPEGImages", b / "JPEGImages", len(voc.CLASSES), cfg.image_size,
                      cfg.train_limit, cfg.test_limit, cfg.workers, classes=voc.CLASSES,
                      train_samples=voc.samples(b, "train"), test_samples=voc.samples(b, "test"), multilabel=True,
                      decode=cfg.decode)


_CACHE: dict = {}


def load(cfg: DataConfig):
    """MemoryData or FolderData for a data config (small data sets are cached per process).

    `data._target_`: the user's function, called with the node's keyword arguments, returns a
    MemoryData (sslprune.compute.protocol.DataSet); it is named data.name, and the limits apply."""
    if cfg._target_ is not None:
        data = factory.build("data._target_", cfg._target_, cfg.kwargs)
        if not isinstance(data, MemoryData):
            raise ConfigError(f"data._target_={cfg._target_} returned a {type(data).__name__}, not a "
                              "sslprune.compute.dataset.MemoryData (docs/extending.md)")
        return dataclasses.replace(data, name=cfg.name, train=_limit(data.train, cfg.train_limit),
                                   test=_limit(data.test, cfg.test_limit))
    catalog.check(cfg)
    root = root_of(cfg)
    if cfg.name == "voc07":
        return _voc07(cfg, root)
    if cfg.name == "places205" and catalog.places205_released(root):
        return _places205(cfg, root)
    if cfg.name in catalog.HOW_TO_GET:
        classes = catalog.folder_classes(cfg.name, root)
        return FolderData(cfg.name, root / "train", root / "val", len(classes), cfg.image_size,
                          cfg.train_limit, cfg.test_limit, cfg.workers, classes=tuple(classes), decode=cfg.decode)
    key = (cfg.name, str(root))
    if key not in _CACHE:
        reader = {"digits": lambda: digits(), "fashion_mnist": lambda: fashion_mnist(root),
                  "cifar10": lambda: cifar10(root)}[cfg.name]
        _CACHE[key] = reader()
    train, test = _CACHE[key]
    spec = {
        "digits": dict(mean=(0.3,), std=(0.4,), pad=1, flip=False),  # a flipped digit is another glyph
        "fashion_mnist": dict(mean=(0.286,), std=(0.353,), pad=2, flip=True),
        "cifar10": dict(mean=(0.491, 0.482, 0.447), std=(0.247, 0.243, 0.262), pad=2, flip=True),
    }[cfg.name]
    # A fixed fact of each data set, not the largest label seen (a subset may lack the last class).
    num_classes = NUM_CLASSES[cfg.name]
    top = max(int(train.labels.max()), int(test.labels.max()))
    if top >= num_classes or min(int(train.labels.min()), int(test.labels.min())) < 0:
        raise DataCorrupt(f"{cfg.name} under {root} has labels outside 0..{num_classes - 1} (max {top})")
    return MemoryData(cfg.name, _limit(train, cfg.train_limit), _limit(test, cfg.test_limit), num_classes, **spec)
