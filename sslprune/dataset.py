"""Data sets in their standard on-disk layouts.

Small data sets (digits, Fashion-MNIST, CIFAR-10) are read whole into uint8 tensors so the
loader can keep them on the accelerator and augment a batch at once. ImageNet-like data sets
(ImageNet, Places205) stay ImageFolder trees read by a DataLoader.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import DataConfig, ConfigError, DATASETS

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"


class DataMissing(FileNotFoundError):
    """A data root that does not hold the expected files; says where and how to get them."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N


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
    """An IDX file (MNIST family), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for d in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


FASHION_MNIST_FILES = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]


def _fashion_mnist_missing(root: Path) -> None:
    missing = [n for n in FASHION_MNIST_FILES if _find_idx(root, n) is None]
    if missing:
        raise DataMissing(
            f"Fashion-MNIST IDX files {', '.join(n + '[.gz]' for n in missing)} "
            f"not found under {root} (nor {root}/FashionMNIST/raw). Install Debian's package "
            f"dataset-fashion-mnist (files in {FASHION_MNIST_DEBIAN}) or use torchvision's "
            "FashionMNIST(root, download=True) on a machine with internet, then set data.root.")


def fashion_mnist(root: Path) -> tuple[Split, Split]:
    _fashion_mnist_missing(root)
    splits = []
    for prefix in ("train", "t10k"):
        img, lab = _find_idx(root, f"{prefix}-images-idx3-ubyte"), _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        images = torch.from_numpy(read_idx(img).copy())[:, None]
        splits.append(Split(images, torch.from_numpy(read_idx(lab).astype(np.int64))))
    return splits[0], splits[1]


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar10_base(root: Path) -> Path:
    """The folder holding the batches: data.root may name it or the folder above it."""
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    missing = [n for n in CIFAR10_FILES if not (base / n).is_file()]
    if missing:
        raise DataMissing(
            f"CIFAR-10 python batches {', '.join(missing)} not found under {base}. Download "
            "cifar-10-python.tar.gz (torchvision.datasets.CIFAR10(root, download=True) does it) and "
            "set data.root to the folder holding cifar-10-batches-py/.")
    return base


def cifar10(root: Path) -> tuple[Split, Split]:
    base = _cifar10_base(root)
    names = CIFAR10_FILES[:5]

    def read(files):
        xs, ys = [], []
        for n in files:
            with open(base / n, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))

    return read(names), read(["test_batch"])


NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10}
DEFAULT_ROOTS = {"fashion_mnist": FASHION_MNIST_DEBIAN}
HOW_TO_GET = {
    "imagenet": "ImageNet (ILSVRC-2012) from image-net.org, arranged as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "places205": "Places205 from places.csail.mit.edu, arranged as train/<category>/*.jpg and val/<category>/*.jpg",
}


def root_of(cfg: DataConfig) -> Optional[Path]:
    root = cfg.root or DEFAULT_ROOTS.get(cfg.name)
    return Path(os.path.expanduser(root)) if root else None


def check(cfg: DataConfig) -> None:
    """Fail fast, before any work, when a data set's files are not where the config says."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.name!r} is not one of {', '.join(DATASETS)}")
    if cfg.name == "digits":
        return
    root = root_of(cfg)
    if root is None:
        raise DataMissing(f"{cfg.name} needs data.root (the folder holding the data set); none given")
    if not root.is_dir():
        raise DataMissing(f"{cfg.name} data root {root} does not exist. " + _how(cfg.name))
    if cfg.name == "fashion_mnist":
        _fashion_mnist_missing(root)
    elif cfg.name == "cifar10":
        _cifar10_base(root)
    else:
        folder_classes(cfg.name, root)


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def folder_classes(name: str, root: Path) -> list[str]:
    """The class folders of an ImageFolder data set (those of train/); val/ may hold a subset.

    Only folder names are read (cheap even for ImageNet). The class index is the position in
    train/'s sorted list, for both splits, so a val/ lacking a class keeps the labels aligned."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataMissing(f"{name}: {root / split} does not exist. " + _how(name))
    classes = _subdirs(root / "train")
    if not classes:
        raise DataMissing(f"{name}: {root / 'train'} holds no class folders (train/<class>/<image>). " + _how(name))
    unknown = sorted(set(_subdirs(root / "val")) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataMissing(f"{name}: {root / 'val'} has class folders that {root / 'train'} lacks: {shown}. "
                          "Both splits must use the same class folder names.")
    return classes


def _how(name: str) -> str:
    return {
        "fashion_mnist": f"Install Debian's dataset-fashion-mnist ({FASHION_MNIST_DEBIAN}) or torchvision's layout.",
        "cifar10": "Download cifar-10-python.tar.gz and set data.root to the folder holding cifar-10-batches-py/.",
    }.get(name, "Obtain " + HOW_TO_GET.get(name, name) + ".")


_CACHE: dict = {}


def load(cfg: DataConfig):
    """MemoryData or FolderData for a data config (small data sets are cached per process)."""
    check(cfg)
    root = root_of(cfg)
    if cfg.name in HOW_TO_GET:
        classes = folder_classes(cfg.name, root)
        return FolderData(cfg.name, root / "train", root / "val", len(classes), cfg.image_size,
                          cfg.train_limit, cfg.test_limit, cfg.workers, classes=tuple(classes))
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
        raise ValueError(f"{cfg.name} under {root} has labels outside 0..{num_classes - 1} (max {top})")
    return MemoryData(cfg.name, _limit(train, cfg.train_limit), _limit(test, cfg.test_limit), num_classes, **spec)
