"""Data sets in their standard on-disk layouts.

Small data sets (digits, Fashion-MNIST, CIFAR-10) are read whole into uint8 tensors so the
loader can keep them on the accelerator and augment a batch at once. ImageNet-like data sets
(ImageNet, Places205, VOC07) stay files on disk read by a DataLoader: ImageFolder trees, or
explicit (path, target) lists read from the data set's own split files (Places205's official
CSV lists, VOC07's ImageSets and Annotations, sslprune.voc).
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import voc
from .config import DataConfig, ConfigError, DATASETS

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"


class DataMissing(FileNotFoundError):
    """A data root that does not hold the expected files; says where and how to get them."""


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
    "places205": "Places205 from places.csail.mit.edu, either as released (trainvalsplit_places205/"
                 "{train,val}_places205.csv with the images under images256/ or "
                 "data/vision/torralba/deeplearning/images256/) or arranged as train/<category>/*.jpg "
                 "and val/<category>/*.jpg",
}
PLACES205_SPLITS = "trainvalsplit_places205"
PLACES205_IMAGES = ("images256", "data/vision/torralba/deeplearning/images256")


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
    elif cfg.name == "voc07":
        voc.check(root)
    elif cfg.name == "places205" and (root / PLACES205_SPLITS).exists():
        _places205_files(root)
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


def _places205_files(root: Path) -> tuple[Path, Path, Path]:
    """(train list, val list, image folder) of the official Places205 release."""
    lists = [root / PLACES205_SPLITS / f"{s}_places205.csv" for s in ("train", "val")]
    for p in lists:
        if not p.is_file():
            raise DataMissing(f"places205: {p} does not exist. " + _how("places205"))
    for images in PLACES205_IMAGES:
        if (root / images).is_dir():
            return lists[0], lists[1], root / images
    raise DataMissing(f"places205: no image folder under {root}: expected "
                      + " or ".join(str(root / i) for i in PLACES205_IMAGES) + ". " + _how("places205"))


def _places205_list(path: Path, images: Path) -> tuple:
    """(image path, label) of every line "a/abbey/00000001.jpg 0" of an official split list."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"places205: {path} line {n} is {line.strip()!r}, not '<relative path> <label>'")
            out.append((str(images / parts[0]), int(parts[1])))
    if not out:
        raise DataMissing(f"places205: {path} lists no images. " + _how("places205"))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _places205_samples(train_list: Path, val_list: Path, images: Path) -> tuple:
    """(train, val, class names) of the official lists; cached per process (2.5 million lines, and
    every stage loads its data)."""
    train, test = _places205_list(train_list, images), _places205_list(val_list, images)
    # 205 classes in the release; a subset (or a test fixture) may hold fewer.
    num_classes = 1 + max(max(label for _, label in train), max(label for _, label in test))
    names = {}
    for path, label in train:
        names.setdefault(label, os.path.relpath(os.path.dirname(path), images))  # "a/abbey"
    return train, test, tuple(names.get(i, str(i)) for i in range(num_classes))


def _places205(cfg: DataConfig, root: Path) -> FolderData:
    train_list, val_list, images = _places205_files(root)
    train, test, classes = _places205_samples(train_list, val_list, images)
    # Listing 2.5 million images is the loader's business; the first of each list shows the image
    # folder is the right one before any work.
    for path, _ in (train[0], test[0]):
        if not os.path.isfile(path):
            raise DataMissing(f"places205: image {path} listed in {PLACES205_SPLITS}/ does not exist. "
                              + _how("places205"))
    return FolderData(cfg.name, images, images, len(classes), cfg.image_size, cfg.train_limit, cfg.test_limit,
                      cfg.workers, classes=classes, train_samples=train, test_samples=test)


def _voc07(cfg: DataConfig, root: Path) -> FolderData:
    b = voc.check(root)
    return FolderData(cfg.name, b / "JPEGImages", b / "JPEGImages", len(voc.CLASSES), cfg.image_size,
                      cfg.train_limit, cfg.test_limit, cfg.workers, classes=voc.CLASSES,
                      train_samples=voc.samples(b, "train"), test_samples=voc.samples(b, "test"), multilabel=True)


def _how(name: str) -> str:
    return {
        "fashion_mnist": f"Install Debian's dataset-fashion-mnist ({FASHION_MNIST_DEBIAN}) or torchvision's layout.",
        "cifar10": "Download cifar-10-python.tar.gz and set data.root to the folder holding cifar-10-batches-py/.",
        "voc07": voc.HOW,
    }.get(name, "Obtain " + HOW_TO_GET.get(name, name) + ".")


_CACHE: dict = {}


def load(cfg: DataConfig):
    """MemoryData or FolderData for a data config (small data sets are cached per process)."""
    check(cfg)
    root = root_of(cfg)
    if cfg.name == "voc07":
        return _voc07(cfg, root)
    if cfg.name == "places205" and (root / PLACES205_SPLITS).exists():
        return _places205(cfg, root)
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
